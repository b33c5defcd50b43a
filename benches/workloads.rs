//! Throughput of whole operation mixes at fixed thread counts: caskv against the maps a user
//! would pick instead, in one process run, with ratios. Its own runner (not criterion), in the
//! manner of conc-map-bench/bustle: threads released together by a barrier run a precomputed
//! sequence of operations for a fixed time, and the figure is operations per second of wall
//! time, all threads together.
//!
//! # Shapes
//!
//! A shape is a key type and a value type `V`; every map of a shape holds `V` as its value type.
//!
//! | # | shape | kind |
//! |---|---|---|
//! | 0 | `u64 -> u64` | natural (headline) |
//! | 1 | `String` (16-32 B) `-> [u8; 64]` | natural (headline) |
//! | 2 | `u64 -> Arc<[u8; 64]>` | `Arc` (secondary) |
//! | 3 | `String` (16-32 B) `-> Arc<[u8; 64]>` | `Arc` (secondary) |
//! | 4 | `String` (16-32 B) `-> Arc<[u8; 1024]>` | `Arc` (secondary) |
//!
//! In the natural shapes (issue #10's headline) every map holds the value inline, in its own
//! way: a write clones `V` in (8 or 64 bytes copied) and a read looks at it where the map keeps
//! it, or gets a copy where the map's natural read hands out a clone (moka, quick_cache, caskv's
//! plain `get`). In the `Arc` shapes every map holds an `Arc<[u8; N]>`: a write clones the `Arc`
//! (a refcount increment, no allocation) and a cloning read clones the `Arc`. caskv is a
//! `Store<K, V>` of the same `V` as its peers, written with `set(k, v)`; how it keeps `V`
//! behind that is caskv's own (the adapter's `// caskv-api` lines are the only ones that know
//! its API's types). Every map that takes a hasher gets `foldhash::fast::RandomState`.
//!
//! # Maps
//!
//! Each operation uses the map's most natural single call, with a fresh guard or lock per
//! operation (nothing is held across operations, so every map can reclaim as it goes), except
//! the `caskv pin` row, which holds a handle per thread across each chunk of 256 operations, as
//! a caller that keeps a handle would (conc-map-bench pins once per thread):
//!
//! | map | read | insert (an upsert) | remove | update (only if present) |
//! |---|---|---|---|---|
//! | caskv `Store` (row `caskv`) | `get` (an owned `Entry`) | `set` | `delete` | `get`, then `set_cas` on its index |
//! | caskv `Store` (row `caskv pin`, natural shapes; a `store.pin()` held per 256 operations) | `pin().get` (borrows; nested in the held pin: no atomic RMW) | `set` | `delete` | `pin().get`, then `set_cas` on its index |
//! | `RwLock<HashMap>` (std, the baseline) | read lock, `get` | write lock, `insert` | write lock, `remove` | write lock, `get_mut` |
//! | dashmap | `get` | `insert` | `remove` | `get_mut` |
//! | `scc::HashMap` | `read_sync` | `upsert_sync` | `remove_sync` | `update_sync` |
//! | `scc::HashIndex` | `peek_with` | `entry_sync` (replace or insert) | `remove_sync` | `get_sync` + `OccupiedEntry::update` |
//! | papaya | `pin().get` | `pin().insert` | `pin().remove` | `pin().update` (a compute loop) |
//! | moka `sync::Cache` | `get` (clones the value) | — | — | — |
//! | quick_cache `sync::Cache` | `get` (clones the value) | — | — | — |
//! | std `HashMap` (unsync; natural shapes) | `get`, no lock | — | — | — |
//!
//! A read touches the value: it passes a reference to it through `black_box` and reads its
//! first byte, so a map whose read clones the value really copies it (64 bytes for
//! `[u8; 64]`). Maps start empty and grow during the prefill, as a store that does not know its
//! size would. The two caches run only the read-only workload (YCSB-C); their capacity is twice
//! the key count, so nothing is evicted (checked after the prefill, and every YCSB read must
//! hit, else a warning is printed). `std HashMap (unsync)` is a plain `HashMap` read with no
//! lock at all: the single-thread floor of a hot get, run only for YCSB-C at one thread (its
//! cells at other thread counts print `—`). `scc::HashIndex` prints the miss warning at 2
//! threads in YCSB-A/B: its values are immutable, so a replace inserts the new entry and then
//! removes the old one, and a lock-free `peek_with` racing with it can find neither (a few
//! misses per million reads); the other maps never miss. caskv has no "write only if present"
//! call, so its update is a read of the index and a `set_cas` on it (two lookups; a CAS lost to
//! a concurrent writer counts as done, since the update is then ordered just before that
//! write). The `caskv` row is the plain API and carries the goals' verdicts; `caskv pin` holds
//! a `Pinned` handle for each chunk of 256 operations of a thread (released between chunks, so
//! reclamation goes on) and reads through `pin().get` inside it.
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
//! come from a small per-thread pool (cloned in: a copy, or a refcount increment for `Arc`s);
//! prefilled values are distinct per key (or a pool where that would exceed 2 GiB). String keys
//! are looked up in a prebuilt table; an insert clones the key (`String`), on every map.
//!
//! Each (workload, key space, map, thread count) is one phase: warm-up, then the timed part,
//! in the same threads. The ReadHeavy and Exchange runs of a map share one prefill, as do its
//! YCSB runs (run C, B, A in that order, so C reads the distinct prefilled values).
//!
//! # Running
//!
//! ```text
//! cargo bench --bench workloads -- --quick   # shapes 0, 1 (every workload) and 2 (YCSB only), 1K and 1M; 0.1 s warm-up + 0.35 s per phase; about 4 min on 2 cores
//! cargo bench --bench workloads              # all five shapes, every workload; 0.5 s + 2 s per phase; about 35 min on 2 cores
//! ```
//!
//! (Both durations are estimates: each run prints its own plan, the phase count and the time
//! its phases take, before it starts.) The repo's benches are usually run with
//! `CARGO_TARGET_DIR=/work/target-bench`. Environment: `CASKV_BENCH_SHAPES=natural` (or `arc`,
//! `all`, or shape numbers such as `0,2`; also `--shapes=...`) picks the shapes, in place of
//! the mode's own set (in `--quick` an `Arc` shape still runs YCSB only);
//! `CASKV_BENCH_THREADS=1,2,4,8,16,32` sets the thread counts (default `1,2`; ratios between
//! thread counts use the first); `CASKV_BENCH_SECS=3` sets the timed part of each phase (the
//! full run's warm-up is a quarter of it, at most 0.5 s); `CASKV_BENCH_16M=1` adds the 16M key
//! space. Arguments that do not start with `--` filter the runs: a run is kept when
//! `workload/map` (e.g. `YCSB-C/caskv`) contains one of them, case insensitive. Without
//! `--bench` (that is, under `cargo test --benches`) it runs a smoke pass of 20 ms phases on
//! 1K keys, in the quick run's shapes. `--plan` prints the run's header and plan, and stops.
//!
//! # Output
//!
//! Per shape, workload and key space, a Markdown table: millions of operations per second at
//! each thread count, the scaling against the first thread count, caskv's (the `caskv` row's)
//! throughput divided by the map's at each thread count, and the CPU share the bench threads
//! got (CPU time from `/proc/thread-self/schedstat` over threads x wall time: about 0.5 at 2
//! threads when another process held one of 2 cores, so a contended run can be told; it cannot
//! see contention outside the machine, such as hypervisor steal or a busy SMT sibling). Then
//! YCSB-A latency per operation (p50/p99/p99.9 of every operation and of the writes alone,
//! hdrhistogram, from a separate run after each YCSB-A throughput run in which every operation
//! is timed on its own), and, per natural shape, a summary of issue #10's goals with the
//! achieved ratio beside each: caskv against the best of dashmap, papaya, `scc::HashMap` and
//! `scc::HashIndex` per workload, key space and thread count, against the unsync `HashMap` on
//! a hot get, its YCSB-A scaling, and its YCSB-A write tail. Every ratio compares figures
//! measured in the same process run. Nothing is asserted on timing.

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

/// A value type of the bench, held by every map of a shape as its value type.
trait Value: Clone + Send + Sync + 'static {
    /// Bytes one held value takes beyond the map's own slot (its size inline; for an `Arc`, the
    /// pointer and the allocation): bounds the prefill's distinct values.
    const FOOTPRINT: usize;
    fn make(seed: u64) -> Self;
    /// What a reader does with the value: hands a reference to it to `black_box` (so a clone
    /// handed out by the map is really made) and reads its first byte.
    fn touch(&self) -> u8;
}

impl Value for u64 {
    const FOOTPRINT: usize = 8;

    fn make(seed: u64) -> Self {
        splitmix(seed) | 1
    }

    #[inline(always)]
    fn touch(&self) -> u8 {
        *black_box(self) as u8
    }
}

impl<const N: usize> Value for [u8; N] {
    const FOOTPRINT: usize = N;

    fn make(seed: u64) -> Self {
        let mut bytes = [0u8; N];
        bytes[0] = (seed as u8) | 1;
        bytes[N - 1] = (seed >> 8) as u8;
        bytes
    }

    #[inline(always)]
    fn touch(&self) -> u8 {
        black_box(self)[0]
    }
}

impl<const N: usize> Value for Arc<[u8; N]> {
    /// The pointer, two counters and the bytes.
    const FOOTPRINT: usize = 8 + 16 + N;

    fn make(seed: u64) -> Self {
        Arc::new(<[u8; N]>::make(seed))
    }

    #[inline(always)]
    fn touch(&self) -> u8 {
        (**self).touch()
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

trait Map<K: BenchKey, V: Value>: Sync + Sized {
    /// Builds an empty map; `keys` is the key count, used only by the caches' capacity.
    fn new(keys: usize) -> Self;
    /// A new map holding `input`'s prefill, inserted one key at a time.
    fn prefilled(input: &Inputs<K, V>) -> Self {
        let map = Self::new(input.n);
        for id in 0..input.n {
            let value = &input.values[id % input.values.len()];
            K::with(&input.keys, id as u32, |k| map.insert(k, value));
        }
        map
    }
    /// Runs `f`, one chunk of a thread's operations, inside the map's per-thread handle; a map
    /// without one (every peer: each call takes its own guard or lock) just runs it.
    #[inline(always)]
    fn session<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
    /// The value's first byte if the key is present.
    fn get(&self, k: &K) -> Option<u8>;
    /// Inserts or replaces (clones `v` in).
    fn insert(&self, k: &K, v: &V);
    /// Whether the key was present.
    fn remove(&self, k: &K) -> bool;
    /// Replaces the value only if the key is present; whether it was.
    fn update(&self, k: &K, v: &V) -> bool;
    fn len(&self) -> usize;
}

/// caskv's store. `PIN` picks the read: `false` is the plain `get` (row `caskv`: an owned
/// `Entry`), `true` is `pin().get` inside a handle held for a chunk of operations (row
/// `caskv pin`: the inner pin nests in the held one, which makes no atomic read-modify-write).
///
/// The lines marked `// caskv-api` are the only ones written against caskv's API types; they
/// compile whether `set` takes `impl Into<Arc<V>>` or `V` (a `V` is both) and whether
/// `Entry::value` is an `Arc<V>` or a `V` (`touch` auto-derefs). While `set` wraps each value
/// in an `Arc` of its own, the `Arc` shapes' `Store<K, Arc<[u8; N]>>` pays an allocation per
/// write and a second indirection per read there (no peer does).
struct Caskv<K, V, const PIN: bool>(caskv::Store<K, V>);

/// What a read does with caskv's owned entry.
#[inline(always)]
fn caskv_touch<V: Value>(e: &caskv::Entry<V>) -> u8 {
    e.value.touch() // caskv-api
}

impl<K: BenchKey, V: Value, const PIN: bool> Map<K, V> for Caskv<K, V, PIN> {
    fn new(_keys: usize) -> Self {
        Caskv(caskv::Store::new())
    }

    #[inline(always)]
    fn session<R>(&self, f: impl FnOnce() -> R) -> R {
        if PIN {
            let _held = self.0.pin();
            f()
        } else {
            f()
        }
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        if PIN {
            self.0.pin().get(k).map(|e| e.value.touch()) // caskv-api
        } else {
            self.0.get(k).map(|e| caskv_touch(&e)) // caskv-api
        }
    }

    #[inline]
    fn insert(&self, k: &K, v: &V) {
        black_box(self.0.set(k.clone(), v.clone())); // caskv-api
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.delete(k).is_ok()
    }

    #[inline]
    fn update(&self, k: &K, v: &V) -> bool {
        let index = if PIN {
            self.0.pin().get(k).map(|e| e.modify_index)
        } else {
            self.0.get(k).map(|e| e.modify_index)
        };
        let Some(index) = index else {
            return false;
        };
        // A conflict means another writer got in after our read: this update is ordered just
        // before that write, so it counts as done, as it would for the maps that lock.
        let _ = black_box(self.0.set_cas(k.clone(), v.clone(), index)); // caskv-api
        true
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Locked<K, V>(RwLock<HashMap<K, V, Hasher>>);

impl<K: BenchKey, V: Value> Map<K, V> for Locked<K, V> {
    fn new(_keys: usize) -> Self {
        Locked(RwLock::new(HashMap::with_hasher(Hasher::default())))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.read().unwrap().get(k).map(|v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &V) {
        let (k, v) = (k.clone(), v.clone());
        let old = self.0.write().unwrap().insert(k, v);
        drop(old);
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        let old = self.0.write().unwrap().remove(k);
        old.is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &V) -> bool {
        let v = v.clone();
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

struct Dash<K, V>(dashmap::DashMap<K, V, Hasher>);

impl<K: BenchKey, V: Value> Map<K, V> for Dash<K, V> {
    fn new(_keys: usize) -> Self {
        Dash(dashmap::DashMap::with_hasher(Hasher::default()))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.get(k).map(|r| r.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &V) {
        let (k, v) = (k.clone(), v.clone());
        black_box(self.0.insert(k, v));
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.remove(k).is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &V) -> bool {
        let v = v.clone();
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

struct SccMap<K, V>(scc::HashMap<K, V, Hasher>);

impl<K: BenchKey, V: Value> Map<K, V> for SccMap<K, V> {
    fn new(_keys: usize) -> Self {
        SccMap(scc::HashMap::with_hasher(Hasher::default()))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.read_sync(k, |_, v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &V) {
        let (k, v) = (k.clone(), v.clone());
        black_box(self.0.upsert_sync(k, v));
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.remove_sync(k).is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &V) -> bool {
        let v = v.clone();
        self.0.update_sync(k, |_, slot| *slot = v).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct SccIndex<K, V>(scc::HashIndex<K, V, Hasher>);

impl<K: BenchKey, V: Value> Map<K, V> for SccIndex<K, V> {
    fn new(_keys: usize) -> Self {
        SccIndex(scc::HashIndex::with_hasher(Hasher::default()))
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.peek_with(k, |_, v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &V) {
        let (k, v) = (k.clone(), v.clone());
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
    fn update(&self, k: &K, v: &V) -> bool {
        let v = v.clone();
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

struct Papaya<K, V>(papaya::HashMap<K, V, Hasher>);

impl<K: BenchKey, V: Value> Map<K, V> for Papaya<K, V> {
    fn new(_keys: usize) -> Self {
        Papaya(papaya::HashMap::builder().hasher(Hasher::default()).build())
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.pin().get(k).map(|v| v.touch())
    }

    #[inline]
    fn insert(&self, k: &K, v: &V) {
        let (k, v) = (k.clone(), v.clone());
        black_box(self.0.pin().insert(k, v).is_some());
    }

    #[inline]
    fn remove(&self, k: &K) -> bool {
        self.0.pin().remove(k).is_some()
    }

    #[inline]
    fn update(&self, k: &K, v: &V) -> bool {
        // papaya has no plain "replace if present": `update` is its compute loop, which may
        // call the closure more than once (a clone each time).
        let k = k.clone();
        self.0.pin().update(k, |_| v.clone()).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Moka<K: BenchKey, V: Value>(moka::sync::Cache<K, V, Hasher>);

impl<K: BenchKey, V: Value> Map<K, V> for Moka<K, V> {
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
        // moka hands out a clone of the value: a copy, or an `Arc` increment and decrement.
        self.0.get(k).map(|v| v.touch())
    }

    fn insert(&self, k: &K, v: &V) {
        self.0.insert(k.clone(), v.clone());
    }

    fn remove(&self, k: &K) -> bool {
        self.0.remove(k).is_some()
    }

    /// Not timed (the caches run YCSB-C only); not atomic.
    fn update(&self, k: &K, v: &V) -> bool {
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

type QuickCacheOf<K, V> = quick_cache::sync::Cache<K, V, quick_cache::UnitWeighter, Hasher>;

struct QuickCache<K: BenchKey, V: Value>(QuickCacheOf<K, V>);

impl<K: BenchKey, V: Value> Map<K, V> for QuickCache<K, V> {
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

    fn insert(&self, k: &K, v: &V) {
        self.0.insert(k.clone(), v.clone());
    }

    fn remove(&self, k: &K) -> bool {
        self.0.remove(k).is_some()
    }

    fn update(&self, k: &K, v: &V) -> bool {
        self.0.replace(k.clone(), v.clone(), false).is_ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A plain std `HashMap`, built by `&mut` inserts and then only read, through `&self`, with no
/// lock: the single-thread floor of a hot get. Runs YCSB-C at one thread only.
struct Unsync<K, V>(HashMap<K, V, Hasher>);

impl<K: BenchKey, V: Value> Map<K, V> for Unsync<K, V> {
    fn new(_keys: usize) -> Self {
        Unsync(HashMap::with_hasher(Hasher::default()))
    }

    fn prefilled(input: &Inputs<K, V>) -> Self {
        let mut map = Self::new(input.n);
        for id in 0..input.n {
            let value = &input.values[id % input.values.len()];
            K::with(&input.keys, id as u32, |k| {
                map.0.insert(k.clone(), value.clone())
            });
        }
        map
    }

    #[inline]
    fn get(&self, k: &K) -> Option<u8> {
        self.0.get(k).map(|v| v.touch())
    }

    fn insert(&self, _k: &K, _v: &V) {
        unreachable!("the unsync HashMap runs the read-only workload only")
    }

    fn remove(&self, _k: &K) -> bool {
        unreachable!("the unsync HashMap runs the read-only workload only")
    }

    fn update(&self, _k: &K, _v: &V) -> bool {
        unreachable!("the unsync HashMap runs the read-only workload only")
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One row of the tables: a map and what it runs.
struct MapInfo {
    name: &'static str,
    /// Runs the read-only workload (YCSB-C) only.
    get_only: bool,
    /// Runs at one thread only (no synchronization at all).
    one_thread: bool,
    /// Runs in the natural shapes only.
    natural_only: bool,
}

const fn map_info(
    name: &'static str,
    get_only: bool,
    one_thread: bool,
    natural_only: bool,
) -> MapInfo {
    MapInfo {
        name,
        get_only,
        one_thread,
        natural_only,
    }
}

/// The maps, in table order; caskv first (its plain row is the one every ratio is of).
const MAPS: [MapInfo; 10] = [
    map_info("caskv", false, false, false),
    map_info("caskv pin", false, false, true),
    map_info("RwLock<HashMap>", false, false, false),
    map_info("dashmap", false, false, false),
    map_info("scc::HashMap", false, false, false),
    map_info("scc::HashIndex", false, false, false),
    map_info("papaya", false, false, false),
    map_info("moka", true, false, false),
    map_info("quick_cache", true, false, false),
    map_info("std HashMap (unsync)", true, true, true),
];
const CASKV: usize = 0;
const CASKV_PIN: usize = 1;
const UNSYNC: usize = 9;
/// The peers the goals compare caskv against: the best of these per figure.
const PEERS: [usize; 4] = [3, 4, 5, 6];

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
fn work<K: BenchKey, V: Value, M: Map<K, V>>(
    map: &M,
    keys: &K::Table,
    ops: &[u32],
    pool: &[V],
    pos: &mut usize,
    phase: &AtomicU8,
    me: u8,
) -> Tally {
    let (mask, pool_mask) = (ops.len() - 1, pool.len() - 1);
    let mut t = Tally::default();
    let mut i = *pos;
    // Relaxed: the flag only tells the thread when to stop; it orders nothing.
    while phase.load(Ordering::Relaxed) == me {
        map.session(|| {
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
        });
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
fn phase<K: BenchKey, V: Value, M: Map<K, V>>(
    map: &M,
    keys: &K::Table,
    seqs: &[Vec<u32>],
    pools: &[Vec<V>],
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

/// One YCSB-A latency row: p50/p99/p99.9 in ns of every operation and of the writes alone.
struct LatencyRow {
    shape: usize,
    space: &'static str,
    map: usize,
    threads: usize,
    all: [u64; 3],
    writes: [u64; 3],
}

/// The YCSB-A latency rows of this run, printed after the throughput tables.
static LATENCIES: Mutex<Vec<LatencyRow>> = Mutex::new(Vec::new());

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn percentiles(h: &hdrhistogram::Histogram<u64>) -> [u64; 3] {
    [0.5, 0.99, 0.999].map(|q| h.value_at_quantile(q))
}

/// Like [`phase`] without a warm-up, but every operation is timed on its own (`Instant` around
/// it, ~20 ns of clock included) into per-thread histograms, one of every operation and one of
/// the writes; returns p50/p99/p99.9 in ns of all threads merged, for each. Throughput is not
/// taken from this run.
fn latency_phase<K: BenchKey, V: Value, M: Map<K, V>>(
    map: &M,
    keys: &K::Table,
    seqs: &[Vec<u32>],
    pools: &[Vec<V>],
    threads: usize,
    measure: Duration,
) -> ([u64; 3], [u64; 3]) {
    let stop = AtomicU8::new(0);
    let barrier = Barrier::new(threads + 1);
    let (all, writes) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, barrier) = (&stop, &barrier);
                let (ops, pool) = (&seqs[t][..], &pools[t][..]);
                s.spawn(move || {
                    let (mut all, mut writes) = (histogram(), histogram());
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
                        let ns = (start.elapsed().as_nanos() as u64).max(1);
                        all.saturating_record(ns);
                        if op >> KIND_SHIFT != READ {
                            writes.saturating_record(ns);
                        }
                    }
                    black_box(sink);
                    (all, writes)
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(measure);
        stop.store(1, Ordering::Relaxed);
        let (mut all, mut writes) = (histogram(), histogram());
        for h in handles {
            let (a, w) = h.join().expect("bench thread panicked");
            let _ = all.add(&a);
            let _ = writes.add(&w);
        }
        (all, writes)
    });
    (percentiles(&all), percentiles(&writes))
}

// ---------------------------------------------------------------------------------------------
// The run: shapes x key spaces x maps x workloads x thread counts.

struct Shape {
    label: &'static str,
    /// Values held inline (the headline); else an `Arc<[u8; N]>` shape (secondary).
    natural: bool,
}

/// Key and value types, in table order; `main` maps each index to its types.
const SHAPES: [Shape; 5] = [
    Shape {
        label: "u64 -> u64 (natural)",
        natural: true,
    },
    Shape {
        label: "String (16-32 B) -> [u8; 64] (natural)",
        natural: true,
    },
    Shape {
        label: "u64 -> Arc<[u8; 64]>",
        natural: false,
    },
    Shape {
        label: "String (16-32 B) -> Arc<[u8; 64]>",
        natural: false,
    },
    Shape {
        label: "String (16-32 B) -> Arc<[u8; 1024]>",
        natural: false,
    },
];
/// The quick run's (and the smoke pass's) shapes.
const QUICK_SHAPES: [usize; 3] = [0, 1, 2];

/// The shapes of a `CASKV_BENCH_SHAPES` / `--shapes=` list: `natural`, `arc`, `all` or shape
/// numbers, comma separated.
fn parse_shapes(spec: &str) -> Result<Vec<usize>, String> {
    let mut shapes = Vec::new();
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let picked: Vec<usize> = match token.to_lowercase().as_str() {
            "all" => (0..SHAPES.len()).collect(),
            "natural" => (0..SHAPES.len()).filter(|&s| SHAPES[s].natural).collect(),
            "arc" => (0..SHAPES.len()).filter(|&s| !SHAPES[s].natural).collect(),
            t => match t.parse::<usize>() {
                Ok(s) if s < SHAPES.len() => vec![s],
                _ => {
                    return Err(format!(
                        "unknown shape {token:?}: use natural, arc, all or 0-{}",
                        SHAPES.len() - 1
                    ))
                }
            },
        };
        shapes.extend(picked);
    }
    shapes.sort_unstable();
    shapes.dedup();
    if shapes.is_empty() {
        return Err(format!("no shape in {spec:?}"));
    }
    Ok(shapes)
}

struct Config {
    threads: Vec<usize>,
    warm: Duration,
    measure: Duration,
    spaces: Vec<(&'static str, usize)>,
    shapes: Vec<usize>,
    /// The `Arc` shapes run the YCSB workloads only (the quick run).
    arc_ycsb_only: bool,
    filters: Vec<String>,
}

impl Config {
    fn wants(&self, workload: usize, map: usize) -> bool {
        let id = format!("{}/{}", WORKLOADS[workload].name, MAPS[map].name).to_lowercase();
        self.filters.is_empty() || self.filters.iter().any(|f| id.contains(f.as_str()))
    }

    /// The workloads `map` runs in `shape`, in run order.
    fn workloads(&self, shape: usize, map: usize) -> Vec<usize> {
        let info = &MAPS[map];
        let natural = SHAPES[shape].natural;
        if info.natural_only && !natural {
            return Vec::new();
        }
        RUN_ORDER
            .into_iter()
            .filter(|&w| !info.get_only || w == YCSB_C)
            .filter(|&w| natural || !self.arc_ycsb_only || WORKLOADS[w].keys == Keys::Zipf)
            .filter(|&w| self.wants(w, map))
            .collect()
    }

    /// The thread counts `map` runs at.
    fn threads_of(&self, map: usize) -> Vec<usize> {
        let one = MAPS[map].one_thread;
        self.threads
            .iter()
            .copied()
            .filter(|&t| !one || t == 1)
            .collect()
    }

    /// Timed phases, latency phases, and the seconds they take (inputs and prefills not
    /// counted).
    fn plan(&self) -> (usize, usize, f64) {
        let (mut timed, mut latency) = (0, 0);
        for &shape in &self.shapes {
            for m in 0..MAPS.len() {
                let workloads = self.workloads(shape, m);
                let threads = self.threads_of(m).len();
                timed += workloads.len() * threads;
                latency += usize::from(workloads.contains(&YCSB_A)) * threads;
            }
        }
        let (timed, latency) = (timed * self.spaces.len(), latency * self.spaces.len());
        let secs = timed as f64 * (self.warm + self.measure).as_secs_f64()
            + latency as f64 * self.measure.as_secs_f64();
        (timed, latency, secs)
    }
}

/// (shape, workload, key space, map, threads) -> figures.
type Results = BTreeMap<(usize, usize, usize, usize, usize), Measured>;

/// The prebuilt inputs of one shape and key space, shared by every map.
struct Inputs<K: BenchKey, V> {
    n: usize,
    keys: K::Table,
    /// Prefill values by id (cycled when shorter than `n`).
    values: Vec<V>,
    /// Per workload, per thread.
    seqs: Vec<Vec<Vec<u32>>>,
    /// Written values, per thread.
    pools: Vec<Vec<V>>,
}

/// Prefilled values stay under this many bytes (16M keys x 1 KiB would not).
const VALUE_BUDGET: usize = 2 << 30;

fn inputs<K: BenchKey, V: Value>(n: usize, max_threads: usize) -> Inputs<K, V> {
    let uniform = key_ids(Keys::Uniform, n, max_threads);
    let zipf = key_ids(Keys::Zipf, n, max_threads);
    let seqs = (0..WORKLOADS.len())
        .map(|w| match WORKLOADS[w].keys {
            Keys::Uniform => sequences(w, &uniform),
            Keys::Zipf => sequences(w, &zipf),
        })
        .collect();
    let distinct = n.min(VALUE_BUDGET / V::FOOTPRINT);
    Inputs {
        n,
        keys: K::table(2 * n),
        values: (0..distinct as u64).map(V::make).collect(),
        seqs,
        pools: (0..max_threads)
            .map(|t| {
                (0..POOL as u64)
                    .map(|i| V::make(splitmix((t as u64) << 32 | i)))
                    .collect()
            })
            .collect(),
    }
}

/// Runs every wanted workload of `map_index` on a fresh `M` per key distribution.
fn run_map<K: BenchKey, V: Value, M: Map<K, V>>(
    cfg: &Config,
    input: &Inputs<K, V>,
    (shape, space, map_index): (usize, usize, usize),
    results: &mut Results,
) {
    let name = MAPS[map_index].name;
    let threads = cfg.threads_of(map_index);
    if threads.is_empty() {
        return;
    }
    let wanted = cfg.workloads(shape, map_index);
    for keys in [Keys::Uniform, Keys::Zipf] {
        let workloads: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|&w| WORKLOADS[w].keys == keys)
            .collect();
        if workloads.is_empty() {
            continue;
        }
        let map = M::prefilled(input);
        let len = map.len();
        if len != input.n {
            println!(
                "warning: {name} holds {len} keys after a prefill of {} (evicted or lost)",
                input.n
            );
        }
        for w in workloads {
            for &t in &threads {
                let seqs = &input.seqs[w];
                let m = phase(
                    &map,
                    &input.keys,
                    seqs,
                    &input.pools,
                    t,
                    cfg.warm,
                    cfg.measure,
                );
                if keys == Keys::Zipf && m.hits != m.reads {
                    println!(
                        "warning: {name} missed {} of {} reads in {} at {t}t (every key is \
                         present)",
                        m.reads - m.hits,
                        m.reads,
                        WORKLOADS[w].name
                    );
                }
                eprintln!(
                    "  {} / {} / {} / {name} / {t}t: {:.2} M ops/s",
                    SHAPES[shape].label,
                    WORKLOADS[w].name,
                    cfg.spaces[space].0,
                    m.ops as f64 / m.wall.as_secs_f64() / 1e6
                );
                results.insert((shape, w, space, map_index, t), m);
                if w == YCSB_A {
                    let (all, writes) =
                        latency_phase(&map, &input.keys, seqs, &input.pools, t, cfg.measure);
                    LATENCIES
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(LatencyRow {
                            shape,
                            space: cfg.spaces[space].0,
                            map: map_index,
                            threads: t,
                            all,
                            writes,
                        });
                }
            }
        }
        // Drop the map (and its deferred garbage) before the next one is built.
        drop(map);
    }
}

fn run_shape<K: BenchKey, V: Value>(cfg: &Config, shape: usize, results: &mut Results) {
    let max_threads = cfg.threads.iter().copied().max().unwrap_or(1);
    for (space, &(label, n)) in cfg.spaces.iter().enumerate() {
        let start = Instant::now();
        let input = inputs::<K, V>(n, max_threads);
        eprintln!(
            "{} / {label} keys: inputs built in {:.1} s",
            SHAPES[shape].label,
            start.elapsed().as_secs_f64()
        );
        for m in 0..MAPS.len() {
            let at = (shape, space, m);
            match m {
                0 => run_map::<K, V, Caskv<K, V, false>>(cfg, &input, at, results),
                1 => run_map::<K, V, Caskv<K, V, true>>(cfg, &input, at, results),
                2 => run_map::<K, V, Locked<K, V>>(cfg, &input, at, results),
                3 => run_map::<K, V, Dash<K, V>>(cfg, &input, at, results),
                4 => run_map::<K, V, SccMap<K, V>>(cfg, &input, at, results),
                5 => run_map::<K, V, SccIndex<K, V>>(cfg, &input, at, results),
                6 => run_map::<K, V, Papaya<K, V>>(cfg, &input, at, results),
                7 => run_map::<K, V, Moka<K, V>>(cfg, &input, at, results),
                8 => run_map::<K, V, QuickCache<K, V>>(cfg, &input, at, results),
                _ => run_map::<K, V, Unsync<K, V>>(cfg, &input, at, results),
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
                println!(
                    "### {} · {label} keys · {}",
                    workload.name, SHAPES[shape].label
                );
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
                for (m, info) in MAPS.iter().enumerate() {
                    let rates: Vec<Option<f64>> = cfg
                        .threads
                        .iter()
                        .map(|&t| get(shape, w, space, m, t).map(rate))
                        .collect();
                    if rates.iter().all(Option::is_none) {
                        continue;
                    }
                    let mut row = format!("| {} |", info.name);
                    for (r, &t) in rates.iter().zip(&cfg.threads) {
                        row += &match r {
                            Some(r) => format!(" {:.2} |", r / 1e6),
                            // Not synchronized: it does not run on more than one thread.
                            None if info.one_thread && t != 1 => " — |".to_string(),
                            None => " - |".to_string(),
                        };
                    }
                    for r in &rates[1..] {
                        row += &format!(" {} |", ratio(*r, rates[0]));
                    }
                    for (i, &t) in cfg.threads.iter().enumerate() {
                        let caskv = get(shape, w, space, CASKV, t).map(rate);
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

/// A caskv row's throughput over the best peer's (of [`PEERS`]) for one (shape, workload,
/// space, threads), and that peer's name.
fn against_best_peer(
    results: &Results,
    caskv_row: usize,
    key: (usize, usize, usize, usize),
) -> Option<(f64, &'static str)> {
    let (shape, w, space, t) = key;
    let caskv = rate(results.get(&(shape, w, space, caskv_row, t))?);
    let (best, name) = PEERS
        .iter()
        .filter_map(|&m| Some((rate(results.get(&(shape, w, space, m, t))?), MAPS[m].name)))
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some((caskv / best, name))
}

fn print_latencies(cfg: &Config) {
    let lat = LATENCIES.lock().unwrap_or_else(|e| e.into_inner());
    for &shape in &cfg.shapes {
        let rows: Vec<_> = lat.iter().filter(|r| r.shape == shape).collect();
        if rows.is_empty() {
            continue;
        }
        println!();
        println!(
            "### YCSB-A latency per operation (ns; each op timed alone, ~20 ns of clock \
             included) · {}",
            SHAPES[shape].label
        );
        println!();
        println!(
            "| keys | map | threads | p50 | p99 | p99.9 | write p50 | write p99 | write p99.9 | \
             write p99.9/p50 |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            let ([p50, p99, p999], [w50, w99, w999]) = (r.all, r.writes);
            println!(
                "| {} | {} | {} | {p50} | {p99} | {p999} | {w50} | {w99} | {w999} | {:.1}x |",
                r.space,
                MAPS[r.map].name,
                r.threads,
                w999 as f64 / w50.max(1) as f64
            );
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}

/// Issue #10's goals, per natural shape: the `caskv` row (the plain API) carries the verdict;
/// `caskv pin` is shown beside it.
fn print_goals(cfg: &Config, results: &Results) {
    let natural: Vec<usize> = cfg
        .shapes
        .iter()
        .copied()
        .filter(|&s| SHAPES[s].natural)
        .collect();
    if natural.is_empty() {
        println!();
        println!("(No natural shape ran: issue #10's goals are measured on the natural shapes.)");
        return;
    }
    let lat = LATENCIES.lock().unwrap_or_else(|e| e.into_inner());
    for shape in natural {
        println!();
        println!("### Goals of issue #10 · {}", SHAPES[shape].label);
        println!();
        println!(
            "Best peer: the fastest of dashmap, papaya, scc::HashMap and scc::HashIndex in the \
             same figure. The verdict is the `caskv` row's (plain `get`); `pin` is the \
             `caskv pin` row's."
        );
        println!();
        println!("| goal | workload · keys | achieved | met |");
        println!("|---|---|---|---|");
        for (goal, w, bar) in [
            ("get-only ≥ 1.0x the best peer", YCSB_C, 1.0),
            ("YCSB-B ≥ 1.0x the best peer", YCSB_B, 1.0),
            ("YCSB-A ≥ 0.8x the best peer", YCSB_A, 0.8),
        ] {
            for (space, &(label, _)) in cfg.spaces.iter().enumerate() {
                let (mut parts, mut ok, mut pin_ok, mut any) = (Vec::new(), true, true, false);
                for &t in &cfg.threads {
                    let Some((r, peer)) = against_best_peer(results, CASKV, (shape, w, space, t))
                    else {
                        continue;
                    };
                    any = true;
                    ok &= r >= bar;
                    let pin = against_best_peer(results, CASKV_PIN, (shape, w, space, t));
                    let pin = pin.map_or_else(String::new, |(p, _)| {
                        pin_ok &= p >= bar;
                        format!(" (pin {p:.2}x)")
                    });
                    parts.push(format!("{t}t {r:.2}x{pin} vs {peer}"));
                }
                if any {
                    println!(
                        "| {goal} | {} · {label} | {} | {} (pin: {}) |",
                        WORKLOADS[w].name,
                        parts.join("; "),
                        verdict(ok),
                        verdict(pin_ok)
                    );
                }
            }
        }
        // The hot get against the unsync HashMap: YCSB-C on 1K keys at one thread.
        if let Some(space) = cfg.spaces.iter().position(|s| s.0 == "1K") {
            let at = |m| results.get(&(shape, YCSB_C, space, m, 1)).map(rate);
            for (goal, row, bar) in [
                (
                    "hot get (plain `get`) within 2x of unsync std HashMap",
                    CASKV,
                    2.0,
                ),
                (
                    "hot get through a held handle within 1.5x of unsync std HashMap",
                    CASKV_PIN,
                    1.5,
                ),
            ] {
                if let (Some(std), Some(caskv)) = (at(UNSYNC), at(row)) {
                    let slower = std / caskv;
                    println!(
                        "| {goal} | YCSB-C · 1K · 1t | std ÷ {} {slower:.2}x | {} |",
                        MAPS[row].name,
                        verdict(slower <= bar)
                    );
                }
            }
        }
        // Scaling of the write-heavy mix.
        for (space, &(label, _)) in cfg.spaces.iter().enumerate() {
            let at = |m, t| results.get(&(shape, YCSB_A, space, m, t));
            if let (Some(m1), Some(m2)) = (at(CASKV, 1), at(CASKV, 2)) {
                let r = rate(m2) / rate(m1);
                let share = cpu_share(m2, 2)
                    .map_or_else(String::new, |s| format!(" (2t CPU share {s:.2})"));
                let pin = match (at(CASKV_PIN, 1), at(CASKV_PIN, 2)) {
                    (Some(p1), Some(p2)) => format!("; pin {:.2}x", rate(p2) / rate(p1)),
                    _ => String::new(),
                };
                println!(
                    "| YCSB-A at 2 threads ≥ 1.0x one thread | YCSB-A · {label} | caskv 2t/1t \
                     {r:.2}x{share}{pin} | {} |",
                    verdict(r >= 1.0)
                );
            }
        }
        // The write tail under YCSB-A.
        for &(label, _) in &cfg.spaces {
            let rows: Vec<_> = lat
                .iter()
                .filter(|r| r.shape == shape && r.space == label && r.map == CASKV)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut ok = true;
            let parts: Vec<String> = rows
                .iter()
                .map(|r| {
                    let [p50, _, p999] = r.writes;
                    let x = p999 as f64 / p50.max(1) as f64;
                    ok &= x <= 4.0;
                    format!("{}t p50 {p50} ns, p99.9 {p999} ns: {x:.1}x", r.threads)
                })
                .collect();
            println!(
                "| write p99.9 within 4x its p50 | YCSB-A · {label} | {} | {} |",
                parts.join("; "),
                verdict(ok)
            );
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
        (0.1, secs.unwrap_or(0.35))
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
    let shape_spec = args
        .iter()
        .find_map(|a| a.strip_prefix("--shapes=").map(str::to_string))
        .or_else(|| std::env::var("CASKV_BENCH_SHAPES").ok());
    let shapes = match shape_spec {
        Some(spec) => parse_shapes(&spec).unwrap_or_else(|e| {
            eprintln!("workloads: {e}");
            std::process::exit(2)
        }),
        None if quick || smoke => QUICK_SHAPES.to_vec(),
        None => (0..SHAPES.len()).collect(),
    };
    let cfg = Config {
        threads,
        warm: Duration::from_secs_f64(warm),
        measure: Duration::from_secs_f64(measure),
        spaces,
        shapes,
        arc_ycsb_only: quick,
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
    let (timed, latency, phase_secs) = cfg.plan();
    println!(
        "Shapes: {}{}. Plan: {timed} timed phases and {latency} latency phases, {phase_secs:.0} s \
         of phases (inputs and prefills come on top).",
        cfg.shapes
            .iter()
            .map(|&s| SHAPES[s].label)
            .collect::<Vec<_>>()
            .join("; "),
        if cfg.arc_ycsb_only && cfg.shapes.iter().any(|&s| !SHAPES[s].natural) {
            " (Arc shapes: YCSB only)"
        } else {
            ""
        }
    );
    if args.iter().any(|a| a == "--plan") {
        return;
    }
    println!(
        "M ops/s: million operations per second of wall time, all threads together. \
         caskv ÷ map: the `caskv` row's figure over the row's, same run (above 1 = caskv \
         faster). CPU share: CPU time the threads got / (threads x wall)."
    );

    let start = Instant::now();
    let mut results = Results::new();
    for &shape in &cfg.shapes {
        match shape {
            0 => run_shape::<u64, u64>(&cfg, shape, &mut results),
            1 => run_shape::<String, [u8; 64]>(&cfg, shape, &mut results),
            2 => run_shape::<u64, Arc<[u8; 64]>>(&cfg, shape, &mut results),
            3 => run_shape::<String, Arc<[u8; 64]>>(&cfg, shape, &mut results),
            _ => run_shape::<String, Arc<[u8; 1024]>>(&cfg, shape, &mut results),
        }
    }
    print_tables(&cfg, &results);
    print_latencies(&cfg);
    print_goals(&cfg, &results);
    println!();
    println!("total wall time: {:.0} s", start.elapsed().as_secs_f64());
}
