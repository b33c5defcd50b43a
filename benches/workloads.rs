//! Throughput of whole operation mixes at fixed thread counts: caskv against the maps a user
//! would pick instead, in one process run, with ratios. Its own runner (not criterion), in the
//! manner of conc-map-bench/bustle: threads released together by a barrier run a precomputed
//! sequence of operations for a fixed time, and the figure is operations per second of wall
//! time, all threads together.
//!
//! # Maps
//!
//! Every map holds the same key type and `Arc<[u8; N]>` values (the `Arc<V>` that caskv keeps
//! internally, so nobody pays an extra indirection), and every map that takes a hasher gets
//! `foldhash::fast::RandomState`. Each operation uses the map's most natural single call, with a
//! fresh guard or lock per operation:
//!
//! | map | read | insert (an upsert) | remove | update (only if present) |
//! |---|---|---|---|---|
//! | caskv `Store` | `pin().get` (borrows) | `set` | `delete` | `pin().get`, then `set_cas` on its index |
//! | `RwLock<HashMap>` (std, the baseline) | read lock, `get` | write lock, `insert` | write lock, `remove` | write lock, `get_mut` |
//! | dashmap | `get` | `insert` | `remove` | `get_mut` |
//! | `scc::HashMap` | `read_sync` | `upsert_sync` | `remove_sync` | `update_sync` |
//! | `scc::HashIndex` | `peek_with` | `entry_sync` (replace or insert) | `remove_sync` | `get_sync` + `OccupiedEntry::update` |
//! | papaya | `pin().get` | `pin().insert` | `pin().remove` | `pin().update` (a compute loop) |
//! | moka `sync::Cache` | `get` (clones the `Arc`) | — | — | — |
//! | quick_cache `sync::Cache` | `get` (clones the `Arc`) | — | — | — |
//!
//! A read touches the value (reads its first byte). Maps start empty and grow during the
//! prefill, as a store that does not know its size would. The two caches run only the
//! read-only workload (YCSB-C); their capacity is twice the key count, so nothing is evicted
//! (checked after the prefill, and every YCSB read must hit, else a warning is printed).
//! `scc::HashIndex` prints that warning at 2 threads in YCSB-A/B: its values are immutable, so a
//! replace inserts the new entry and then removes the old one, and a lock-free `peek_with`
//! racing with it can find neither (a few misses per million reads); the other maps never miss.
//! caskv has no "write only if present" call, so its update is a read of the index and a
//! `set_cas` on it (two lookups; a CAS lost to a concurrent writer counts as done, since the
//! update is then ordered just before that write).
//!
//! # Workloads
//!
//! - **ReadHeavy** 98 % read, 1 % insert, 1 % remove; **Exchange** 10 % read, 40 % insert,
//!   40 % remove, 10 % update (the conc-map-bench mixes). Keys uniform over `2n` ids of which
//!   the first `n` are prefilled; with as many inserts as removes the population stays near
//!   `n`, and about half of the reads, removes and updates find their key.
//! - **YCSB-A** 50 % read / 50 % update, **YCSB-B** 95 / 5, **YCSB-C** 100 % read, keys
//!   zipf(0.99) (`rand_distr::Zipf`) over `n` prefilled keys, ranks scrambled by a random
//!   permutation so hot keys are not neighbours. YCSB's update is a blind write of a present
//!   record, so it is the map's `insert` (caskv's `set`).
//! - Key spaces `n` = 1K and 1M; 16M with `CASKV_BENCH_16M=1` (long prefill, several GiB).
//!
//! Every thread has its own precomputed, seeded sequence of 2^20 operations (key id and kind
//! packed in a `u32`), cycled, identical for every map, so the RNG is not measured and every map
//! sees the same keys. Thread `i` has the same sequence at every thread count. Written values
//! come from a small per-thread pool of `Arc`s (a refcount increment, no allocation); prefilled
//! values are distinct per key (or a pool where that would exceed 2 GiB). String keys are
//! looked up in a prebuilt table; an insert clones the key (`String`), on every map.
//!
//! Each (workload, key space, map, thread count) is one phase: warm-up, then the timed part,
//! in the same threads. The ReadHeavy and Exchange runs of a map share one prefill, as do its
//! YCSB runs (run C, B, A in that order, so C reads the distinct prefilled values).
//!
//! # Running
//!
//! ```text
//! cargo bench --bench workloads -- --quick   # u64 keys, 64 B values, 1K and 1M; 0.2 s warm-up + 0.7 s per phase; about 2-3 min on 2 cores
//! cargo bench --bench workloads              # adds 16-32 byte String keys with 64 B and 1 KiB values; 0.5 s + 2 s per phase; about 18 min on 2 cores
//! ```
//!
//! The repo's benches are usually run with `CARGO_TARGET_DIR=/work/target-bench`. Environment:
//! `CASKV_BENCH_THREADS=1,2,4,8,16,32` sets the thread counts (default `1,2`; ratios between
//! thread counts use the first); `CASKV_BENCH_SECS=3` sets the timed part of each phase (the
//! full run's warm-up is a quarter of it, at most 0.5 s); `CASKV_BENCH_16M=1` adds the 16M key
//! space. Arguments that do not start with `--` filter the
//! runs: a run is kept when `workload/map` (e.g. `YCSB-C/caskv`) contains one of them, case
//! insensitive. Without `--bench` (that is, under `cargo test --benches`) it runs a smoke pass
//! of 20 ms phases on 1K keys.
//!
//! # Output
//!
//! Per shape (key and value type), workload and key space, a Markdown table: millions of
//! operations per second at each thread count, the scaling against the first thread count,
//! caskv's throughput divided by the map's at each thread count, and the CPU share the bench
//! threads got (CPU time from `/proc/thread-self/schedstat` over threads x wall time: about 0.5
//! at 2 threads when another process held one of 2 cores, so a contended run can be told; it
//! cannot see contention outside the machine, such as hypervisor steal or a busy SMT sibling).
//! Then YCSB-A latency per operation (p50/p99/p99.9, hdrhistogram, from a separate run after
//! each YCSB-A throughput run in which every operation is timed on its own), and a summary of
//! issue #6's goals that this bench speaks to, with the achieved ratio beside each. Every ratio compares figures measured in the same process run. Nothing is asserted on
//! timing.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

type Hasher = foldhash::fast::RandomState;

// ---------------------------------------------------------------------------------------------
// Keys and values.

/// A key type of the bench: built once per id into a table, looked up by id per operation.
trait BenchKey: Hash + Eq + Ord + Clone + Send + Sync + 'static {
    /// Prebuilt keys (nothing for `u64`, whose id is the key).
    type Table: Sync;
    fn table(ids: usize) -> Self::Table;
    /// Calls `f` with the key of `id`.
    fn with<R>(table: &Self::Table, id: u32, f: impl FnOnce(&Self) -> R) -> R;
}

impl BenchKey for u64 {
    type Table = ();

    fn table(_ids: usize) -> Self::Table {}

    #[inline(always)]
    fn with<R>(_table: &(), id: u32, f: impl FnOnce(&u64) -> R) -> R {
        f(&u64::from(id))
    }
}

impl BenchKey for String {
    type Table = Vec<String>;

    /// `user:<id in hex>:` padded with letters to 16-32 bytes (a length drawn per id).
    fn table(ids: usize) -> Self::Table {
        (0..ids as u64)
            .map(|id| {
                let mut h = splitmix(id ^ 0x4B45_5953);
                let len = 16 + (h % 17) as usize;
                let mut s = format!("user:{id:x}:");
                while s.len() < len {
                    h = splitmix(h);
                    s.push(char::from(b'a' + (h % 26) as u8));
                }
                s
            })
            .collect()
    }

    #[inline(always)]
    fn with<R>(table: &Vec<String>, id: u32, f: impl FnOnce(&String) -> R) -> R {
        f(&table[id as usize])
    }
}

/// A value of the bench: `N` bytes, shared as `Arc<[u8; N]>` by every map.
trait Payload: Send + Sync + 'static {
    fn make(seed: u64) -> Arc<Self>;
    /// What a reader does with the value: reads its first byte.
    fn touch(&self) -> u8;
}

impl<const N: usize> Payload for [u8; N] {
    fn make(seed: u64) -> Arc<Self> {
        let mut bytes = [0u8; N];
        bytes[0] = (seed as u8) | 1;
        bytes[N - 1] = (seed >> 8) as u8;
        Arc::new(bytes)
    }

    #[inline(always)]
    fn touch(&self) -> u8 {
        self[0]
    }
}

/// splitmix64 of `x`: seeds and key padding.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// The maps, each behind the same small trait (monomorphized: no virtual call per operation).

trait Map<K, P>: Sync + Sized {
    /// Builds an empty map; `keys` is the key count, used only by the caches' capacity.
    fn new(keys: usize) -> Self;
    /// The value's first byte if the key is present.
    fn get(&self, k: &K) -> Option<u8>;
    /// Inserts or replaces.
    fn insert(&self, k: &K, v: &Arc<P>);
    /// Whether the key was present.
    fn remove(&self, k: &K) -> bool;
    /// Replaces the value only if the key is present; whether it was.
    fn update(&self, k: &K, v: &Arc<P>) -> bool;
    fn len(&self) -> usize;
}

struct Caskv<K, P>(caskv::Store<K, P>);

impl<K: BenchKey, P: Payload> Map<K, P> for Caskv<K, P> {
    fn new(_keys: usize) -> Self {
        Caskv(caskv::Store::new())
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.pin().get(k).map(|e| e.value.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &Arc<P>) {
        let (k, v) = (k.clone(), Arc::clone(v));
        black_box(self.0.set(k, v));
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.delete(k).is_ok()
    }

    #[inline]
    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        let Some(index) = self.0.pin().get(k).map(|e| e.modify_index) else {
            return false;
        };
        let (k, v) = (k.clone(), Arc::clone(v));
        // A conflict means another writer got in after our read: this update is ordered just
        // before that write, so it counts as done, as it would for the maps that lock.
        let _ = black_box(self.0.set_cas(k, v, index));
        true
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Locked<K, P>(RwLock<HashMap<K, Arc<P>, Hasher>>);

impl<K: BenchKey, P: Payload> Map<K, P> for Locked<K, P> {
    fn new(_keys: usize) -> Self {
        Locked(RwLock::new(HashMap::with_hasher(Hasher::default())))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.read().unwrap().get(k).map(|v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &Arc<P>) {
        let (k, v) = (k.clone(), Arc::clone(v));
        let old = self.0.write().unwrap().insert(k, v);
        drop(old);
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        let old = self.0.write().unwrap().remove(k);
        old.is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        let v = Arc::clone(v);
        let mut map = self.0.write().unwrap();
        match map.get_mut(k) {
            Some(slot) => {
                let old = std::mem::replace(slot, v);
                drop(map);
                drop(old);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }
}

struct Dash<K, P>(dashmap::DashMap<K, Arc<P>, Hasher>);

impl<K: BenchKey, P: Payload> Map<K, P> for Dash<K, P> {
    fn new(_keys: usize) -> Self {
        Dash(dashmap::DashMap::with_hasher(Hasher::default()))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.get(k).map(|v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &Arc<P>) {
        let (k, v) = (k.clone(), Arc::clone(v));
        black_box(self.0.insert(k, v));
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.remove(k).is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        let v = Arc::clone(v);
        match self.0.get_mut(k) {
            Some(mut slot) => {
                *slot = v;
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct SccMap<K, P>(scc::HashMap<K, Arc<P>, Hasher>);

impl<K: BenchKey, P: Payload> Map<K, P> for SccMap<K, P> {
    fn new(_keys: usize) -> Self {
        SccMap(scc::HashMap::with_hasher(Hasher::default()))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.read_sync(k, |_, v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &Arc<P>) {
        let (k, v) = (k.clone(), Arc::clone(v));
        black_box(self.0.upsert_sync(k, v));
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.remove_sync(k).is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        let v = Arc::clone(v);
        self.0.update_sync(k, |_, slot| *slot = v).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct SccIndex<K, P>(scc::HashIndex<K, Arc<P>, Hasher>);

impl<K: BenchKey, P: Payload> Map<K, P> for SccIndex<K, P> {
    fn new(_keys: usize) -> Self {
        SccIndex(scc::HashIndex::with_hasher(Hasher::default()))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.peek_with(k, |_, v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &Arc<P>) {
        let (k, v) = (k.clone(), Arc::clone(v));
        match self.0.entry_sync(k) {
            scc::hash_index::Entry::Occupied(mut o) => o.update(v),
            scc::hash_index::Entry::Vacant(e) => drop(e.insert_entry(v)),
        }
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.remove_sync(k)
    }

    #[inline]
    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        let v = Arc::clone(v);
        match self.0.get_sync(k) {
            Some(mut o) => {
                o.update(v);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Papaya<K, P>(papaya::HashMap<K, Arc<P>, Hasher>);

impl<K: BenchKey, P: Payload> Map<K, P> for Papaya<K, P> {
    fn new(_keys: usize) -> Self {
        Papaya(papaya::HashMap::builder().hasher(Hasher::default()).build())
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.pin().get(k).map(|v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &Arc<P>) {
        let (k, v) = (k.clone(), Arc::clone(v));
        black_box(self.0.pin().insert(k, v).is_some());
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.pin().remove(k).is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        // papaya has no plain "replace if present": `update` is its compute loop, which may
        // call the closure more than once (a refcount increment each time).
        let k = k.clone();
        self.0.pin().update(k, |_| Arc::clone(v)).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Moka<K: BenchKey, P: Payload>(moka::sync::Cache<K, Arc<P>, Hasher>);

impl<K: BenchKey, P: Payload> Map<K, P> for Moka<K, P> {
    fn new(keys: usize) -> Self {
        let capacity = 2 * keys;
        Moka(
            moka::sync::Cache::builder()
                .max_capacity(capacity as u64)
                .initial_capacity(capacity)
                .build_with_hasher(Hasher::default()),
        )
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        // moka hands out a clone of the value: an `Arc` increment and decrement per read.
        self.0.get(k).map(|v| v.touch())
    }

    fn insert(&self, k: &K, v: &Arc<P>) {
        self.0.insert(k.clone(), Arc::clone(v));
    }

    fn remove(&self, k: &K) -> bool {
        self.0.remove(k).is_some()
    }

    /// Not timed (the caches run YCSB-C only); not atomic.
    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        let present = self.0.contains_key(k);
        if present {
            self.insert(k, v);
        }
        present
    }

    fn len(&self) -> usize {
        // moka applies inserts to its policy lazily; settle them before counting.
        self.0.run_pending_tasks();
        self.0.entry_count() as usize
    }
}

type QuickCacheOf<K, P> = quick_cache::sync::Cache<K, Arc<P>, quick_cache::UnitWeighter, Hasher>;

struct QuickCache<K: BenchKey, P: Payload>(QuickCacheOf<K, P>);

impl<K: BenchKey, P: Payload> Map<K, P> for QuickCache<K, P> {
    fn new(keys: usize) -> Self {
        let capacity = 2 * keys;
        QuickCache(quick_cache::sync::Cache::with(
            capacity,
            capacity as u64,
            quick_cache::UnitWeighter,
            Hasher::default(),
            Default::default(),
        ))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        // Like moka, quick_cache hands out a clone of the value.
        self.0.get(k).map(|v| v.touch())
    }

    fn insert(&self, k: &K, v: &Arc<P>) {
        self.0.insert(k.clone(), Arc::clone(v));
    }

    fn remove(&self, k: &K) -> bool {
        self.0.remove(k).is_some()
    }

    fn update(&self, k: &K, v: &Arc<P>) -> bool {
        self.0.replace(k.clone(), Arc::clone(v), false).is_ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The maps, in table order; caskv first. Caches run the read-only workload only.
const MAPS: [(&str, bool); 8] = [
    ("caskv", false),
    ("RwLock<HashMap>", false),
    ("dashmap", false),
    ("scc::HashMap", false),
    ("scc::HashIndex", false),
    ("papaya", false),
    ("moka", true),
    ("quick_cache", true),
];

// ---------------------------------------------------------------------------------------------
// Workloads and their operation sequences.

/// Operation kinds, in the top two bits of a sequence entry; the key id is in the rest.
const READ: u32 = 0;
const INSERT: u32 = 1;
const REMOVE: u32 = 2;
const UPDATE: u32 = 3;
const KIND_SHIFT: u32 = 30;
const ID_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// Operations per thread sequence (a power of two), cycled.
const SEQ_LEN: usize = 1 << 20;
/// Operations between two looks at the phase flag.
const CHUNK: u64 = 256;
/// Written values per thread (a power of two).
const POOL: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Keys {
    /// Uniform over `2n` ids, the first `n` prefilled.
    Uniform,
    /// zipf(0.99) over `n` prefilled ids, ranks scrambled.
    Zipf,
}

struct Workload {
    name: &'static str,
    /// Percent of read, insert, remove, update.
    mix: [u32; 4],
    keys: Keys,
}

/// In table order. YCSB's update is a blind write of a present record: `INSERT` (an upsert).
const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "ReadHeavy",
        mix: [98, 1, 1, 0],
        keys: Keys::Uniform,
    },
    Workload {
        name: "Exchange",
        mix: [10, 40, 40, 10],
        keys: Keys::Uniform,
    },
    Workload {
        name: "YCSB-A",
        mix: [50, 50, 0, 0],
        keys: Keys::Zipf,
    },
    Workload {
        name: "YCSB-B",
        mix: [95, 5, 0, 0],
        keys: Keys::Zipf,
    },
    Workload {
        name: "YCSB-C",
        mix: [100, 0, 0, 0],
        keys: Keys::Zipf,
    },
];
const READ_HEAVY: usize = 0;
const EXCHANGE: usize = 1;
const YCSB_A: usize = 2;
const YCSB_B: usize = 3;
const YCSB_C: usize = 4;
/// Execution order within a prefill: ReadHeavy then Exchange; C, B, A (C reads the prefilled
/// values before any write replaces them).
const RUN_ORDER: [usize; 5] = [READ_HEAVY, EXCHANGE, YCSB_C, YCSB_B, YCSB_A];

/// The key ids of each thread's sequence, for one key space and one distribution.
fn key_ids(keys: Keys, n: usize, threads: usize) -> Vec<Vec<u32>> {
    let perm: Vec<u32> = if keys == Keys::Zipf {
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(&mut SmallRng::seed_from_u64(splitmix(n as u64)));
        perm
    } else {
        Vec::new()
    };
    let zipf = Zipf::new(n as f64, 0.99).expect("zipf parameters");
    (0..threads)
        .map(|t| {
            let seed = splitmix((n as u64) << 8 | t as u64) ^ keys as u64;
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..SEQ_LEN)
                .map(|_| match keys {
                    Keys::Uniform => rng.random_range(0..2 * n as u32),
                    Keys::Zipf => {
                        let rank = zipf.sample(&mut rng) as usize;
                        perm[rank.clamp(1, n) - 1]
                    }
                })
                .collect()
        })
        .collect()
}

/// Each thread's sequence for `workload`: its key ids with an operation kind drawn by the mix.
fn sequences(workload: usize, ids: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let [read, insert, remove, _] = WORKLOADS[workload].mix;
    ids.iter()
        .enumerate()
        .map(|(t, ids)| {
            let mut rng =
                SmallRng::seed_from_u64(splitmix(0x6D69_7800 | (workload << 8 | t) as u64));
            ids.iter()
                .map(|&id| {
                    let p = rng.random_range(0..100u32);
                    let kind = if p < read {
                        READ
                    } else if p < read + insert {
                        INSERT
                    } else if p < read + insert + remove {
                        REMOVE
                    } else {
                        UPDATE
                    };
                    kind << KIND_SHIFT | id
                })
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running one phase.

#[derive(Default, Clone, Copy)]
struct Tally {
    ops: u64,
    reads: u64,
    hits: u64,
    sink: u64,
}

/// Runs `ops` from `*pos` on `map` while `phase` holds `me`.
#[inline(never)]
fn work<K: BenchKey, P: Payload, M: Map<K, P>>(
    map: &M,
    keys: &K::Table,
    ops: &[u32],
    pool: &[Arc<P>],
    pos: &mut usize,
    phase: &AtomicU8,
    me: u8,
) -> Tally {
    let (mask, pool_mask) = (ops.len() - 1, pool.len() - 1);
    let mut t = Tally::default();
    let mut i = *pos;
    // Relaxed: the flag only tells the thread when to stop; it orders nothing.
    while phase.load(Ordering::Relaxed) == me {
        for _ in 0..CHUNK {
            let op = ops[i & mask];
            let value = &pool[i & pool_mask];
            i = i.wrapping_add(1);
            K::with(keys, op & ID_MASK, |k| match op >> KIND_SHIFT {
                READ => {
                    t.reads += 1;
                    if let Some(byte) = map.get(k) {
                        t.hits += 1;
                        t.sink = t.sink.wrapping_add(u64::from(byte));
                    }
                }
                INSERT => map.insert(k, value),
                REMOVE => t.sink += u64::from(map.remove(k)),
                _ => t.sink += u64::from(map.update(k, value)),
            });
        }
        t.ops += CHUNK;
    }
    *pos = i;
    t
}

/// What a timed phase measured.
#[derive(Default, Clone, Copy)]
struct Measured {
    ops: u64,
    reads: u64,
    hits: u64,
    wall: Duration,
    /// CPU time the bench threads got during the timed part.
    cpu: Duration,
}

/// CPU time this thread has run, from the kernel's scheduler statistics (Linux); zero where
/// unavailable, which leaves the CPU-share columns empty.
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Runs `seqs[..threads]` on `threads` threads: a warm-up of `warm`, then `measure` timed, in
/// the same threads, each part started by a barrier.
#[allow(clippy::too_many_arguments)]
fn phase<K: BenchKey, P: Payload, M: Map<K, P>>(
    map: &M,
    keys: &K::Table,
    seqs: &[Vec<u32>],
    pools: &[Vec<Arc<P>>],
    threads: usize,
    warm: Duration,
    measure: Duration,
) -> Measured {
    // 0: warm-up, 1: timed, 2: stop.
    let flag = AtomicU8::new(0);
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (flag, barrier) = (&flag, &barrier);
                let (ops, pool) = (&seqs[t][..], &pools[t][..]);
                s.spawn(move || {
                    let mut pos = 0;
                    barrier.wait();
                    black_box(work(map, keys, ops, pool, &mut pos, flag, 0).sink);
                    barrier.wait();
                    let (start, cpu) = (Instant::now(), thread_cpu_time());
                    let tally = work(map, keys, ops, pool, &mut pos, flag, 1);
                    let (end, cpu) = (Instant::now(), thread_cpu_time().saturating_sub(cpu));
                    black_box(tally.sink);
                    (tally, cpu, start, end)
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(warm);
        // Relaxed: the threads meet at the barrier next, which orders everything after.
        flag.store(1, Ordering::Relaxed);
        barrier.wait();
        std::thread::sleep(measure);
        flag.store(2, Ordering::Relaxed);
        // Wall time from the first thread's start to the last one's end, as the threads saw
        // them: the main thread may wake from the barrier late on a busy machine.
        let mut m = Measured::default();
        let mut span: Option<(Instant, Instant)> = None;
        for h in handles {
            let (tally, cpu, start, end) = h.join().expect("bench thread panicked");
            m.ops += tally.ops;
            m.reads += tally.reads;
            m.hits += tally.hits;
            m.cpu += cpu;
            span = Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        }
        m.wall = span.map_or(Duration::ZERO, |(s, e)| e - s);
        m
    })
}

/// One YCSB-A latency row: shape, key space label, map, threads, p50/p99/p99.9 in ns.
type LatencyRow = (usize, &'static str, &'static str, usize, [u64; 3]);

/// The YCSB-A latency rows of this run, printed after the throughput tables.
static LATENCIES: Mutex<Vec<LatencyRow>> = Mutex::new(Vec::new());

/// Like [`phase`] without a warm-up, but every operation is timed on its own (`Instant` around
/// it, ~20 ns of clock included) into a per-thread histogram; returns p50/p99/p99.9 in ns of
/// all threads merged. Throughput is not taken from this run.
fn latency_phase<K: BenchKey, P: Payload, M: Map<K, P>>(
    map: &M,
    keys: &K::Table,
    seqs: &[Vec<u32>],
    pools: &[Vec<Arc<P>>],
    threads: usize,
    measure: Duration,
) -> [u64; 3] {
    let stop = AtomicU8::new(0);
    let barrier = Barrier::new(threads + 1);
    let merged = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, barrier) = (&stop, &barrier);
                let (ops, pool) = (&seqs[t][..], &pools[t][..]);
                s.spawn(move || {
                    let mut hist =
                        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                            .expect("histogram bounds");
                    let (mask, pool_mask) = (ops.len() - 1, pool.len() - 1);
                    let mut sink = 0u64;
                    barrier.wait();
                    let mut i = 0usize;
                    // Relaxed: the flag only tells the thread when to stop.
                    while stop.load(Ordering::Relaxed) == 0 {
                        let op = ops[i & mask];
                        let value = &pool[i & pool_mask];
                        i = i.wrapping_add(1);
                        let start = Instant::now();
                        K::with(keys, op & ID_MASK, |k| match op >> KIND_SHIFT {
                            READ => sink += map.get(k).map_or(0, u64::from),
                            INSERT => map.insert(k, value),
                            REMOVE => sink += u64::from(map.remove(k)),
                            _ => sink += u64::from(map.update(k, value)),
                        });
                        let ns = start.elapsed().as_nanos() as u64;
                        hist.saturating_record(ns.max(1));
                    }
                    black_box(sink);
                    hist
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(measure);
        stop.store(1, Ordering::Relaxed);
        let mut merged = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .expect("histogram bounds");
        for h in handles {
            let hist = h.join().expect("bench thread panicked");
            let _ = merged.add(&hist);
        }
        merged
    });
    [
        merged.value_at_quantile(0.5),
        merged.value_at_quantile(0.99),
        merged.value_at_quantile(0.999),
    ]
}

// ---------------------------------------------------------------------------------------------
// The run: shapes x key spaces x maps x workloads x thread counts.

struct Config {
    threads: Vec<usize>,
    warm: Duration,
    measure: Duration,
    spaces: Vec<(&'static str, usize)>,
    shapes: Vec<usize>,
    filters: Vec<String>,
}

impl Config {
    fn wants(&self, workload: usize, map: usize) -> bool {
        let id = format!("{}/{}", WORKLOADS[workload].name, MAPS[map].0).to_lowercase();
        self.filters.is_empty() || self.filters.iter().any(|f| id.contains(f.as_str()))
    }
}

/// Key and value types: label. Index 0 is the quick run's.
const SHAPES: [&str; 3] = [
    "u64 keys, 64 B values",
    "String keys (16-32 B), 64 B values",
    "String keys (16-32 B), 1 KiB values",
];

/// (shape, workload, key space, map, threads) -> figures.
type Results = BTreeMap<(usize, usize, usize, usize, usize), Measured>;

/// The prebuilt inputs of one shape and key space, shared by every map.
struct Inputs<K: BenchKey, P> {
    n: usize,
    keys: K::Table,
    /// Prefill values by id (cycled when shorter than `n`).
    values: Vec<Arc<P>>,
    /// Per workload, per thread.
    seqs: Vec<Vec<Vec<u32>>>,
    /// Written values, per thread.
    pools: Vec<Vec<Arc<P>>>,
}

/// Prefilled values stay under this many bytes (16M keys x 1 KiB would not).
const VALUE_BUDGET: usize = 2 << 30;

fn inputs<K: BenchKey, P: Payload>(n: usize, max_threads: usize) -> Inputs<K, P> {
    let uniform = key_ids(Keys::Uniform, n, max_threads);
    let zipf = key_ids(Keys::Zipf, n, max_threads);
    let seqs = (0..WORKLOADS.len())
        .map(|w| match WORKLOADS[w].keys {
            Keys::Uniform => sequences(w, &uniform),
            Keys::Zipf => sequences(w, &zipf),
        })
        .collect();
    // An `Arc` allocation: two counters and the bytes.
    let distinct = n.min(VALUE_BUDGET / (16 + std::mem::size_of::<P>()));
    Inputs {
        n,
        keys: K::table(2 * n),
        values: (0..distinct as u64).map(P::make).collect(),
        seqs,
        pools: (0..max_threads)
            .map(|t| {
                (0..POOL as u64)
                    .map(|i| P::make(splitmix((t as u64) << 32 | i)))
                    .collect()
            })
            .collect(),
    }
}

fn prefill<K: BenchKey, P: Payload, M: Map<K, P>>(name: &str, map: &M, input: &Inputs<K, P>) {
    for id in 0..input.n {
        let value = &input.values[id % input.values.len()];
        K::with(&input.keys, id as u32, |k| map.insert(k, value));
    }
    let len = map.len();
    if len != input.n {
        println!(
            "warning: {name} holds {len} keys after a prefill of {} (evicted or lost)",
            input.n
        );
    }
}

/// Runs every wanted workload of `map_index` on a fresh `M` per key distribution.
fn run_map<K: BenchKey, P: Payload, M: Map<K, P>>(
    cfg: &Config,
    input: &Inputs<K, P>,
    (shape, space, map_index): (usize, usize, usize),
    results: &mut Results,
) {
    let (name, cache) = MAPS[map_index];
    for keys in [Keys::Uniform, Keys::Zipf] {
        let workloads: Vec<usize> = RUN_ORDER
            .into_iter()
            .filter(|&w| WORKLOADS[w].keys == keys && (!cache || w == YCSB_C))
            .filter(|&w| cfg.wants(w, map_index))
            .collect();
        if workloads.is_empty() {
            continue;
        }
        let map = M::new(input.n);
        prefill(name, &map, input);
        for w in workloads {
            for &threads in &cfg.threads {
                let seqs = &input.seqs[w];
                let m = phase(
                    &map,
                    &input.keys,
                    seqs,
                    &input.pools,
                    threads,
                    cfg.warm,
                    cfg.measure,
                );
                if keys == Keys::Zipf && m.hits != m.reads {
                    println!(
                        "warning: {name} missed {} of {} reads in {} at {threads}t (every key is \
                         present)",
                        m.reads - m.hits,
                        m.reads,
                        WORKLOADS[w].name
                    );
                }
                eprintln!(
                    "  {} / {} / {name} / {threads}t: {:.2} M ops/s",
                    WORKLOADS[w].name,
                    cfg.spaces[space].0,
                    m.ops as f64 / m.wall.as_secs_f64() / 1e6
                );
                results.insert((shape, w, space, map_index, threads), m);
                if w == YCSB_A {
                    let lat =
                        latency_phase(&map, &input.keys, seqs, &input.pools, threads, cfg.measure);
                    LATENCIES.lock().unwrap_or_else(|e| e.into_inner()).push((
                        shape,
                        cfg.spaces[space].0,
                        name,
                        threads,
                        lat,
                    ));
                }
            }
        }
        // Drop the map (and its deferred garbage) before the next one is built.
        drop(map);
    }
}

fn run_shape<K: BenchKey, P: Payload>(cfg: &Config, shape: usize, results: &mut Results) {
    let max_threads = cfg.threads.iter().copied().max().unwrap_or(1);
    for (space, &(label, n)) in cfg.spaces.iter().enumerate() {
        let start = Instant::now();
        let input = inputs::<K, P>(n, max_threads);
        eprintln!(
            "{} / {label} keys: inputs built in {:.1} s",
            SHAPES[shape],
            start.elapsed().as_secs_f64()
        );
        for m in 0..MAPS.len() {
            let at = (shape, space, m);
            match m {
                0 => run_map::<K, P, Caskv<K, P>>(cfg, &input, at, results),
                1 => run_map::<K, P, Locked<K, P>>(cfg, &input, at, results),
                2 => run_map::<K, P, Dash<K, P>>(cfg, &input, at, results),
                3 => run_map::<K, P, SccMap<K, P>>(cfg, &input, at, results),
                4 => run_map::<K, P, SccIndex<K, P>>(cfg, &input, at, results),
                5 => run_map::<K, P, Papaya<K, P>>(cfg, &input, at, results),
                6 => run_map::<K, P, Moka<K, P>>(cfg, &input, at, results),
                _ => run_map::<K, P, QuickCache<K, P>>(cfg, &input, at, results),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report.

fn rate(m: &Measured) -> f64 {
    m.ops as f64 / m.wall.as_secs_f64()
}

fn cpu_share(m: &Measured, threads: usize) -> Option<f64> {
    (!m.cpu.is_zero()).then(|| m.cpu.as_secs_f64() / (m.wall.as_secs_f64() * threads as f64))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    }
}

fn print_tables(cfg: &Config, results: &Results) {
    let get = |s, w, sp, m, t| results.get(&(s, w, sp, m, t));
    let first = cfg.threads[0];
    for &shape in &cfg.shapes {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            for (space, &(label, _)) in cfg.spaces.iter().enumerate() {
                if !(0..MAPS.len()).any(|m| {
                    cfg.threads
                        .iter()
                        .any(|&t| get(shape, w, space, m, t).is_some())
                }) {
                    continue;
                }
                println!();
                println!("### {} · {label} keys · {}", workload.name, SHAPES[shape]);
                println!();
                let mut head = String::from("| map |");
                let mut rule = String::from("|---|");
                for &t in &cfg.threads {
                    head += &format!(" {t}t M ops/s |");
                    rule += "---:|";
                }
                for &t in &cfg.threads[1..] {
                    head += &format!(" {t}t/{first}t |");
                    rule += "---:|";
                }
                for &t in &cfg.threads {
                    head += &format!(" caskv ÷ map {t}t |");
                    rule += "---:|";
                }
                for &t in &cfg.threads {
                    head += &format!(" CPU share {t}t |");
                    rule += "---:|";
                }
                println!("{head}");
                println!("{rule}");
                for (m, (name, _)) in MAPS.iter().enumerate() {
                    let rates: Vec<Option<f64>> = cfg
                        .threads
                        .iter()
                        .map(|&t| get(shape, w, space, m, t).map(rate))
                        .collect();
                    if rates.iter().all(Option::is_none) {
                        continue;
                    }
                    let mut row = format!("| {name} |");
                    for r in &rates {
                        row +=
                            &r.map_or_else(|| " - |".to_string(), |r| format!(" {:.2} |", r / 1e6));
                    }
                    for r in &rates[1..] {
                        row += &format!(" {} |", ratio(*r, rates[0]));
                    }
                    for (i, &t) in cfg.threads.iter().enumerate() {
                        let caskv = get(shape, w, space, 0, t).map(rate);
                        row += &format!(" {} |", ratio(caskv, rates[i]));
                    }
                    for &t in &cfg.threads {
                        let share = get(shape, w, space, m, t).and_then(|m| cpu_share(m, t));
                        row += &share.map_or_else(|| " - |".to_string(), |s| format!(" {s:.2} |"));
                    }
                    println!("{row}");
                }
            }
        }
    }
}

/// caskv's throughput over the best peer's for one (shape, workload, space, threads), and
/// that peer's name.
fn against_best_peer(
    results: &Results,
    key: (usize, usize, usize, usize),
) -> Option<(f64, &'static str)> {
    let (shape, w, space, t) = key;
    let caskv = rate(results.get(&(shape, w, space, 0, t))?);
    let (best, name) = (1..MAPS.len())
        .filter_map(|m| Some((rate(results.get(&(shape, w, space, m, t))?), MAPS[m].0)))
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some((caskv / best, name))
}

fn print_latencies(cfg: &Config) {
    let lat = LATENCIES.lock().unwrap_or_else(|e| e.into_inner());
    for &shape in &cfg.shapes {
        let rows: Vec<_> = lat.iter().filter(|r| r.0 == shape).collect();
        if rows.is_empty() {
            continue;
        }
        println!();
        println!(
            "### YCSB-A latency per operation (ns; each op timed alone, ~20 ns of clock included) · {}",
            SHAPES[shape]
        );
        println!();
        println!("| keys | map | threads | p50 | p99 | p99.9 |");
        println!("|---|---|---:|---:|---:|---:|");
        for (_, space, map, threads, [p50, p99, p999]) in rows {
            println!("| {space} | {map} | {threads} | {p50} | {p99} | {p999} |");
        }
    }
}

fn print_goals(cfg: &Config, results: &Results) {
    let first = cfg.threads[0];
    let two = cfg.threads.iter().copied().find(|&t| t == 2);
    for &shape in &cfg.shapes {
        println!();
        println!(
            "### Goals of issue #6 this bench speaks to · {}",
            SHAPES[shape]
        );
        println!();
        println!("| goal | workload · keys | achieved | met |");
        println!("|---|---|---|---|");
        let verdict = |ok: bool| if ok { "yes" } else { "no" };
        for (goal, workloads, bar) in [
            (
                "ReadHeavy and YCSB-B ≥ 1.0x every peer",
                [READ_HEAVY, YCSB_B],
                1.0,
            ),
            ("write-heavy ≥ 0.8x the best peer", [EXCHANGE, YCSB_A], 0.8),
        ] {
            for w in workloads {
                for (space, &(label, _)) in cfg.spaces.iter().enumerate() {
                    let mut parts = Vec::new();
                    let mut ok = true;
                    for &t in &cfg.threads {
                        if let Some((r, peer)) = against_best_peer(results, (shape, w, space, t)) {
                            parts.push(format!("{t}t {r:.2}x (best peer {peer})"));
                            ok &= r >= bar;
                        }
                    }
                    if !parts.is_empty() {
                        println!(
                            "| {goal} | {} · {label} | {} | {} |",
                            WORKLOADS[w].name,
                            parts.join("; "),
                            verdict(ok)
                        );
                    }
                }
            }
        }
        let scaling = |w: usize, space: usize| -> Option<(f64, Option<f64>)> {
            let m1 = results.get(&(shape, w, space, 0, first))?;
            let m2 = results.get(&(shape, w, space, 0, two?))?;
            Some((rate(m2) / rate(m1), cpu_share(m2, 2)))
        };
        for (goal, w, bar, spaces) in [
            ("YCSB-A at 2 threads ≥ 1.0x one thread", YCSB_A, 1.0, None),
            (
                "hot reads at 2 threads ≥ 1.8x one thread",
                YCSB_C,
                1.8,
                Some("1K"),
            ),
        ] {
            for (space, &(label, _)) in cfg.spaces.iter().enumerate() {
                if spaces.is_some_and(|s| s != label) || first != 1 {
                    continue;
                }
                if let Some((r, share)) = scaling(w, space) {
                    let share =
                        share.map_or_else(String::new, |s| format!(" (2t CPU share {s:.2})"));
                    println!(
                        "| {goal} | {} · {label} | caskv 2t/1t {r:.2}x{share} | {} |",
                        WORKLOADS[w].name,
                        verdict(r >= bar)
                    );
                }
            }
        }
    }
    println!();
    println!(
        "A 2t CPU share well below 1.00 means another process held a core during the run: the \
         2t figures, and every ratio built on them, understate what 2 free cores give."
    );
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v != "0" && !v.is_empty())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then a smoke pass only.
    let smoke = !args.iter().any(|a| a == "--bench");
    let threads: Vec<usize> = std::env::var("CASKV_BENCH_THREADS")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|t| t.trim().parse().ok())
                .filter(|&t| t > 0)
                .collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2]);
    let secs: Option<f64> = std::env::var("CASKV_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let (warm, measure) = if smoke {
        (0.01, 0.02)
    } else if quick {
        (0.2, secs.unwrap_or(0.7))
    } else {
        let measure = secs.unwrap_or(2.0);
        ((measure / 4.0).min(0.5), measure)
    };
    let mut spaces = vec![("1K", 1_000)];
    if !smoke {
        spaces.push(("1M", 1_000_000));
        if env_flag("CASKV_BENCH_16M") {
            spaces.push(("16M", 16_000_000));
        }
    }
    let cfg = Config {
        threads,
        warm: Duration::from_secs_f64(warm),
        measure: Duration::from_secs_f64(measure),
        spaces,
        shapes: if quick || smoke {
            vec![0]
        } else {
            vec![0, 1, 2]
        },
        filters: args
            .iter()
            .filter(|a| !a.starts_with("--"))
            .map(|a| a.to_lowercase())
            .collect(),
    };

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("## workloads: throughput of operation mixes, caskv against its peers");
    println!();
    println!(
        "{} mode; {cores} cores ({model}); load average at start: {}; threads {:?}; \
         {:?} warm-up + {:?} timed per phase; keys {:?}",
        if smoke {
            "smoke"
        } else if quick {
            "quick"
        } else {
            "full"
        },
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        cfg.threads,
        cfg.warm,
        cfg.measure,
        cfg.spaces.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    println!(
        "M ops/s: million operations per second of wall time, all threads together. \
         caskv ÷ map: caskv's figure over the row's, same run (above 1 = caskv faster). \
         CPU share: CPU time the threads got / (threads x wall)."
    );

    let start = Instant::now();
    let mut results = Results::new();
    for &shape in &cfg.shapes {
        match shape {
            0 => run_shape::<u64, [u8; 64]>(&cfg, shape, &mut results),
            1 => run_shape::<String, [u8; 64]>(&cfg, shape, &mut results),
            _ => run_shape::<String, [u8; 1024]>(&cfg, shape, &mut results),
        }
    }
    print_tables(&cfg, &results);
    print_latencies(&cfg);
    print_goals(&cfg, &results);
    println!();
    println!("total wall time: {:.0} s", start.elapsed().as_secs_f64());
}
