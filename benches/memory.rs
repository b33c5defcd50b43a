//! Memory per entry (issues #6 and #10): bytes per entry at 1M entries for caskv's `Store` and
//! the maps and caches a user would pick instead, counted by this binary's own global allocator.
//!
//! # Shapes
//!
//! | table | keys | value | heap bytes the key and value own by themselves |
//! |---|---|---|---|
//! | A (natural, headline) | `u64` `0..n` | `u64`, inline | 0 |
//! | B (natural, headline) | `String` of 16-32 bytes | `[u8; 64]`, inline | the key's 16-32 (about 24 on average) |
//! | secondary | `u64` `0..n` | `Arc<[u8; 64]>`, an allocation of its own | the value's 80 (16 B of counts + 64 B) |
//!
//! In the natural shapes every map holds the value inline, in its own natural way. The `String`
//! keys are built like `benches/workloads.rs` builds them: `user:<id in hex>:` padded with
//! letters to a length of 16-32 bytes drawn per id; each is allocated with exactly its length
//! of capacity, inside the measured fill, so every map owns one `String` per entry and its heap
//! bytes count for every map alike. In the secondary table every map holds an
//! `Arc<[u8; 64]>` per key (the natural way to share a value), caskv as a
//! `Store<u64, Arc<[u8; 64]>>`; that table also has a dashmap holding `(u64, Arc<[u8; 64]>)`,
//! a version index beside the value as caskv keeps one. Every map that takes a hasher gets
//! `foldhash::fast::RandomState`. The maps are built one at a time, empty (no capacity given),
//! and each is dropped (and its deferred frees flushed) before the next.
//!
//! caskv keeps each version in one heap allocation (hash, key, modify/create index, flags and
//! the value, 16-byte aligned) and its table is an array of 8-byte slot words, at most half
//! full: one allocation per entry plus the slot array. A `String` key adds the key's own
//! allocation, as in every other map.
//!
//! # Figures
//!
//! The counting allocator forwards to `System` and keeps the bytes currently allocated
//! (requested sizes: allocated minus freed, without malloc's own headers and rounding) and the
//! number of live allocations. For each map the bench reads both before building it and after
//! filling it, single-threaded, and reports:
//!
//! - **bytes/entry**: live bytes added by the filled map, over its entries (after fill, and
//!   after a flush of deferred frees);
//! - **excl. key and value heap bytes**: the same less the heap bytes each entry's key and
//!   value own by themselves (the `String`'s bytes, the `Arc`'s allocation; an average over
//!   the keys): what the map itself costs;
//! - **ratio to dashmap** of each;
//! - allocations per entry (a `String` key or an `Arc` value counts its own allocation), and
//!   the bytes still held after the map is dropped (should be 0; ±2072 B is one node of
//!   crossbeam-epoch's global queue of deferred frees, held or released across the readings).
//!
//! A goal line per natural shape closes the report: caskv's bytes/entry over dashmap's
//! (issue #10's goal: at most 1.2×).
//!
//! **Deferred frees.** caskv and moka (crossbeam-epoch), papaya (seize) and `scc` (sdd) free
//! replaced memory later. A fresh fill replaces no entry, but a growing table retires its old
//! arrays, and these may still be held when the fill ends. Both figures are shown: "after fill"
//! (what is live right then) and "after flush" (after flushing crossbeam-epoch, sdd and, for
//! papaya, the map's own seize guard). A last table overwrites every key of caskv and papaya
//! once (shape A) and shows what is live right after and after a flush: whether reclamation
//! keeps up.
//!
//! moka is sized `max_capacity(n)` and its pending tasks run before the reading; quick_cache is
//! built with `with(n, n, UnitWeighter, …)`. A cache may hold fewer than `n` entries (evicted on
//! insert); the "entries" column says how many each held, and bytes/entry are over those.
//!
//! Run: `cargo bench --bench memory` (about a minute). Without `--bench` on the command line
//! (`cargo test --benches`) it uses 10K entries, a smoke test only. Nothing is asserted; every
//! ratio compares figures of this one run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use caskv::Store;

type Hasher = foldhash::fast::RandomState;

/// issue #10's goal: caskv's bytes per entry at most this many times dashmap's.
const GOAL: f64 = 1.2;

// ---------------------------------------------------------------------------------------------
// Counting allocator.

/// Keeps live bytes and live allocations; forwards everything to the system allocator.
struct Counting;

/// Bytes allocated minus bytes freed, process-wide.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
/// Allocations made minus allocations freed, process-wide.
static LIVE_ALLOCS: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged and only updates two atomics, which never
// allocates. `realloc` and `alloc_zeroed` keep their default bodies, which call `alloc` and
// `dealloc`, so the counts stay exact through them.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Relaxed: the readings are taken by the thread that did the work, or after joins.
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live bytes and allocations now.
#[derive(Clone, Copy)]
struct Live {
    bytes: i64,
    allocs: i64,
}

impl Live {
    fn now() -> Self {
        Live {
            bytes: LIVE_BYTES.load(Ordering::Relaxed),
            allocs: LIVE_ALLOCS.load(Ordering::Relaxed),
        }
    }

    fn since(self, before: Live) -> Live {
        Live {
            bytes: self.bytes - before.bytes,
            allocs: self.allocs - before.allocs,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deferred frees.

#[path = "support/epoch.rs"]
mod epoch;

/// Flushes the process-wide deferred-free schemes: crossbeam-epoch's default collector (caskv's
/// versions, moka's table) until a round of flushes finds little to free, and sdd (scc).
fn flush_deferred() {
    epoch::settle_epoch();
    for _ in 0..10_000 {
        let guard = scc::Guard::new();
        guard.accelerate();
    }
}

/// Flushes a papaya map's own seize collector, then the process-wide schemes.
fn flush_papaya<K, V>(map: &papaya::HashMap<K, V, Hasher>) {
    use papaya::Guard as _;
    for _ in 0..64 {
        map.guard().flush();
    }
    flush_deferred();
}

// ---------------------------------------------------------------------------------------------
// Keys and values.

/// A key or value type of a shape: made from an id, identically for every map.
trait Item: Sized {
    /// The key or value of id `id`.
    fn make(id: u64) -> Self;
    /// Heap bytes this key or value owns by itself (counted by every map alike).
    fn heap_bytes(&self) -> usize;
}

impl Item for u64 {
    fn make(id: u64) -> Self {
        id
    }

    fn heap_bytes(&self) -> usize {
        0
    }
}

impl Item for String {
    /// `user:<id in hex>:` padded with letters to 16-32 bytes (a length drawn per id), as in
    /// `benches/workloads.rs`; allocated with exactly that capacity.
    fn make(id: u64) -> Self {
        let mut h = splitmix(id ^ 0x4B45_5953);
        let len = 16 + (h % 17) as usize;
        let mut s = String::with_capacity(len);
        let _ = write!(s, "user:{id:x}:");
        while s.len() < len {
            h = splitmix(h);
            s.push(char::from(b'a' + (h % 26) as u8));
        }
        s
    }

    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl<const N: usize> Item for [u8; N] {
    fn make(id: u64) -> Self {
        let mut bytes = [id as u8; N];
        bytes[N - 1] = (id >> 8) as u8;
        bytes
    }

    fn heap_bytes(&self) -> usize {
        0
    }
}

impl<const N: usize> Item for Arc<[u8; N]> {
    /// A new allocation per value.
    fn make(id: u64) -> Self {
        Arc::new(<[u8; N]>::make(id))
    }

    /// The two reference counts and the payload.
    fn heap_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>() + N
    }
}

/// splitmix64 of `x`: key padding.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the key and value of ids `0..n` own by themselves, on average per entry.
#[derive(Clone, Copy)]
struct OwnHeap {
    bytes: f64,
    allocs: f64,
}

fn own_heap<K: Item, V: Item>(n: u64) -> OwnHeap {
    let (mut bytes, mut allocs) = (0usize, 0usize);
    for id in 0..n {
        for b in [K::make(id).heap_bytes(), V::make(id).heap_bytes()] {
            bytes += b;
            allocs += usize::from(b > 0);
        }
    }
    let n = n.max(1) as f64;
    OwnHeap {
        bytes: bytes as f64 / n,
        allocs: allocs as f64 / n,
    }
}

// ---------------------------------------------------------------------------------------------
// One measurement.

struct Figures {
    name: &'static str,
    entries: usize,
    after_fill: Live,
    after_flush: Live,
    /// Live bytes left after the map was dropped and deferred frees flushed (0 expected).
    after_drop: i64,
    fill_time: Duration,
}

impl Figures {
    fn per_entry(&self, live: Live) -> f64 {
        live.bytes as f64 / self.entries.max(1) as f64
    }

    /// Bytes per entry after the flush: the headline figure.
    fn bytes(&self) -> f64 {
        self.per_entry(self.after_flush)
    }

    fn allocs_per_entry(&self) -> f64 {
        self.after_flush.allocs as f64 / self.entries.max(1) as f64
    }
}

/// Builds a map with `build`, fills it with the keys and values of ids `0..n` through `insert`,
/// and reads the live bytes at each step. `len` counts what the map holds; `flush` frees its
/// deferred garbage.
fn measure<M, K: Item, V: Item>(
    name: &'static str,
    n: u64,
    build: impl FnOnce() -> M,
    insert: impl Fn(&M, K, V),
    len: impl Fn(&M) -> usize,
    flush: impl Fn(&M),
) -> Figures {
    flush_deferred();
    let before = Live::now();
    let start = Instant::now();
    let map = build();
    for id in 0..n {
        insert(&map, K::make(id), V::make(id));
    }
    let fill_time = start.elapsed();
    // Moka's `len` runs its pending tasks, which may free memory: count first, read after.
    let entries = len(&map);
    let after_fill = Live::now().since(before);
    flush(&map);
    let after_flush = Live::now().since(before);
    drop(map);
    flush_deferred();
    Figures {
        name,
        entries,
        after_fill,
        after_flush,
        after_drop: Live::now().since(before).bytes,
        fill_time,
    }
}

/// Every map of one shape, `K -> V`, caskv first and dashmap second. `version_row` adds a
/// dashmap holding `(u64, V)`: a version index beside the value, as caskv keeps one.
fn run_shape<K, V>(n: u64, version_row: bool) -> Vec<Figures>
where
    K: Item + Hash + Eq + Ord + Clone + Send + Sync + 'static,
    V: Item + Clone + Send + Sync + 'static,
{
    let mut rows = vec![
        measure(
            "caskv Store",
            n,
            Store::<K, V>::new,
            |m, k, v| {
                m.set(k, v);
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
        measure(
            "dashmap",
            n,
            || dashmap::DashMap::<K, V, Hasher>::with_hasher(Hasher::default()),
            |m, k, v| {
                m.insert(k, v);
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
    ];
    if version_row {
        rows.push(measure(
            "dashmap, (version, value) slots",
            n,
            || dashmap::DashMap::<K, (u64, V), Hasher>::with_hasher(Hasher::default()),
            |m, k, v| {
                m.insert(k, (1, v));
            },
            |m| m.len(),
            |_| flush_deferred(),
        ));
    }
    rows.extend([
        measure(
            "RwLock<HashMap>",
            n,
            || RwLock::new(HashMap::<K, V, Hasher>::with_hasher(Hasher::default())),
            |m, k, v| {
                m.write().unwrap_or_else(|e| e.into_inner()).insert(k, v);
            },
            |m| m.read().unwrap_or_else(|e| e.into_inner()).len(),
            |_| flush_deferred(),
        ),
        measure(
            "scc::HashMap",
            n,
            || scc::HashMap::<K, V, Hasher>::with_hasher(Hasher::default()),
            |m, k, v| {
                let _ = m.insert_sync(k, v);
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
        measure(
            "scc::HashIndex",
            n,
            || scc::HashIndex::<K, V, Hasher>::with_hasher(Hasher::default()),
            |m, k, v| {
                let _ = m.insert_sync(k, v);
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
        measure(
            "papaya",
            n,
            || {
                papaya::HashMap::<K, V>::builder()
                    .hasher(Hasher::default())
                    .build()
            },
            |m, k, v| {
                m.pin().insert(k, v);
            },
            |m| m.len(),
            flush_papaya,
        ),
        measure(
            "moka sync::Cache",
            n,
            || {
                moka::sync::Cache::<K, V>::builder()
                    .max_capacity(n)
                    .build_with_hasher(Hasher::default())
            },
            |m, k, v| m.insert(k, v),
            |m| {
                m.run_pending_tasks();
                m.entry_count() as usize
            },
            |_| flush_deferred(),
        ),
        measure(
            "quick_cache sync::Cache",
            n,
            || {
                quick_cache::sync::Cache::<K, V, quick_cache::UnitWeighter, Hasher>::with(
                    n as usize,
                    n,
                    quick_cache::UnitWeighter,
                    Hasher::default(),
                    Default::default(),
                )
            },
            |m, k, v| m.insert(k, v),
            |m| m.len(),
            |_| flush_deferred(),
        ),
    ]);
    rows
}

/// caskv's and dashmap's figures of one shape, for its goal line.
struct Goal {
    shape: &'static str,
    own: OwnHeap,
    caskv_bytes: f64,
    caskv_allocs: f64,
    dash_bytes: f64,
}

/// Prints one shape's table; `own` is what an entry's key and value own by themselves.
fn print_table(shape: &'static str, title: &str, rows: &[Figures], own: OwnHeap) -> Goal {
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} row"))
    };
    let (caskv, dash) = (find("caskv Store"), find("dashmap"));
    let (dash_incl, dash_excl) = (dash.bytes(), dash.bytes() - own.bytes);
    println!();
    println!("### {title}");
    println!();
    println!(
        "| map | entries | bytes/entry, after fill | bytes/entry, after flush | excl. key and value heap bytes ({:.1} B) | ÷ dashmap | excl. ÷ dashmap | allocations/entry | left after drop (B) | fill time |",
        own.bytes
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let incl = r.bytes();
        let excl = incl - own.bytes;
        println!(
            "| {} | {} | {:.1} | {incl:.1} | {excl:.1} | {:.2}x | {:.2}x | {:.2} | {} | {:.0} ms |",
            r.name,
            r.entries,
            r.per_entry(r.after_fill),
            incl / dash_incl,
            excl / dash_excl,
            r.allocs_per_entry(),
            r.after_drop,
            r.fill_time.as_secs_f64() * 1e3
        );
    }
    Goal {
        shape,
        own,
        caskv_bytes: caskv.bytes(),
        caskv_allocs: caskv.allocs_per_entry(),
        dash_bytes: dash_incl,
    }
}

// ---------------------------------------------------------------------------------------------
// Overwrites (shape A).

/// Live bytes per entry of a filled map (flushed), right after every key was overwritten once,
/// and after a flush.
struct Overwrite {
    name: &'static str,
    fresh: f64,
    right_after: f64,
    flushed: f64,
}

/// A map filled with `u64 -> u64`, then every key overwritten once with a new value: live
/// bytes per entry after the fill, right after the overwrite and after `flush` (the map's own
/// reclamation pushed along).
fn overwrite<M>(
    name: &'static str,
    n: u64,
    make: impl FnOnce() -> M,
    insert: impl Fn(&M, u64, u64),
    flush: impl Fn(&M),
) -> Overwrite {
    flush_deferred();
    let before = Live::now();
    let map = make();
    for k in 0..n {
        insert(&map, k, k);
    }
    flush(&map);
    let fresh = Live::now().since(before).bytes;
    for k in 0..n {
        insert(&map, k, k + 1);
    }
    let right_after = Live::now().since(before).bytes;
    flush(&map);
    let flushed = Live::now().since(before).bytes;
    drop(map);
    let per = |b: i64| b as f64 / n.max(1) as f64;
    Overwrite {
        name,
        fresh: per(fresh),
        right_after: per(right_after),
        flushed: per(flushed),
    }
}

/// caskv, whose `set` retires the replaced record to crossbeam-epoch.
fn caskv_overwrite(n: u64) -> Overwrite {
    overwrite(
        "caskv",
        n,
        Store::<u64, u64>::new,
        |m, k, v| {
            m.set(k, v);
        },
        |_| flush_deferred(),
    )
}

/// papaya, whose `insert` retires the replaced entry to its own collector.
fn papaya_overwrite(n: u64) -> Overwrite {
    overwrite(
        "papaya",
        n,
        || -> papaya::HashMap<u64, u64, Hasher> {
            papaya::HashMap::builder().hasher(Hasher::default()).build()
        },
        |m, k, v| {
            m.pin().insert(k, v);
        },
        flush_papaya,
    )
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = if bench { 1_000_000 } else { 10_000 };
    let started = Instant::now();
    println!("caskv memory bench: {n} entries per map; live bytes requested from the allocator");

    let own_a = own_heap::<u64, u64>(n);
    let goal_a = print_table(
        "u64 -> u64",
        &format!("Shape A, natural: u64 -> u64, {n} entries"),
        &run_shape::<u64, u64>(n, false),
        own_a,
    );
    let own_b = own_heap::<String, [u8; 64]>(n);
    let goal_b = print_table(
        "String -> [u8; 64]",
        &format!(
            "Shape B, natural: String (16-32 B, its heap bytes counted) -> [u8; 64] inline, {n} entries"
        ),
        &run_shape::<String, [u8; 64]>(n, false),
        own_b,
    );
    let own_arc = own_heap::<u64, Arc<[u8; 64]>>(n);
    print_table(
        "u64 -> Arc<[u8; 64]>",
        &format!(
            "Secondary: u64 -> Arc<[u8; 64]> (each value its own {:.0} B allocation), {n} entries",
            own_arc.bytes
        ),
        &run_shape::<u64, Arc<[u8; 64]>>(n, true),
        own_arc,
    );

    println!();
    println!("### After overwriting every key once (shape A, u64 -> u64; bytes per entry)");
    println!();
    println!("| map | fresh fill (flushed) | right after the overwrite | after a flush | held for reclamation right after |");
    println!("|---|---:|---:|---:|---:|");
    for o in [caskv_overwrite(n), papaya_overwrite(n)] {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            o.name,
            o.fresh,
            o.right_after,
            o.flushed,
            o.right_after - o.flushed
        );
    }

    println!();
    for g in [goal_a, goal_b] {
        let ratio = g.caskv_bytes / g.dash_bytes;
        println!(
            "goal, {}: caskv {:.1} B/entry ÷ dashmap {:.1} B/entry = {ratio:.2}x (goal <= {GOAL}x): met {}; caskv allocations/entry {:.2} ({:.2} beyond the key's and value's own)",
            g.shape,
            g.caskv_bytes,
            g.dash_bytes,
            if ratio <= GOAL { "yes" } else { "no" },
            g.caskv_allocs,
            g.caskv_allocs - g.own.allocs
        );
    }
    println!();
    println!(
        "(memory bench finished in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
