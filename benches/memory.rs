//! Memory per entry (issue #6): bytes per entry at 1M entries for caskv's `Store` and the maps
//! and caches a user would pick instead, counted by this binary's own global allocator.
//!
//! Every map holds keys `0..1M` (`u64`) and, for each key, its own value allocation: an
//! `Arc<[u8; 64]>` (16 bytes of reference counts + 64 bytes of payload = 80 bytes requested),
//! identical across maps; every map hashes with `foldhash::fast::RandomState`. The maps are
//! built one at a time; each is dropped (and its deferred frees flushed) before the next.
//!
//! The counting allocator forwards to `System` and keeps the bytes currently allocated
//! (requested sizes: allocated minus freed, without malloc's own headers and rounding) and the
//! number of live allocations. For each map the bench reads both before building it and after
//! filling it, single-threaded, and reports:
//!
//! - **bytes/entry incl. value**: live bytes added by the filled map, over its entries;
//! - **excl. value**: the same less the 80-byte value allocation: what the map itself costs;
//! - **ratio to dashmap** of each (the goal: caskv ≤ 1.2× dashmap);
//! - allocations per entry, and the bytes still held after the map is dropped (should be 0).
//!
//! **Deferred frees.** caskv (crossbeam-epoch for versions, papaya's seize for its index),
//! papaya (seize), `scc` (sdd) and moka (crossbeam-epoch) free replaced memory later. A fresh
//! fill replaces no entry, but a growing table retires its old arrays, and these may still be
//! held when the fill ends. Both figures are shown: "after fill" (what is live right then) and
//! "after flush" (after flushing crossbeam-epoch, sdd and, for the papaya peer, the map's own
//! seize guard). caskv's own papaya index keeps its retired tables in a seize batch this bench
//! cannot reach, so caskv's "after flush" may still include them. A last table overwrites every
//! key of caskv (and papaya) once with a new value allocation and shows what is live right after
//! and after a flush: whether reclamation keeps up.
//!
//! moka is sized `max_capacity(1M)` and its pending tasks run before the reading; quick_cache is
//! built with `with(1M, 1M, UnitWeighter, …)`. A cache may hold fewer than 1M entries (evicted on
//! insert); the "entries" column says how many each held, and bytes/entry are over those.
//!
//! Run: `cargo bench --bench memory` (about half a minute). Without `--bench` on the command
//! line (`cargo test --benches`) it uses 10K entries, a smoke test only. Nothing is asserted;
//! every ratio compares figures of this one run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use caskv::Store;

type Hasher = foldhash::fast::RandomState;
type Value = [u8; 64];
type Val = Arc<Value>;

/// Bytes requested for one value: `Arc`'s two counts and the payload.
const VALUE_BYTES: i64 = (2 * std::mem::size_of::<usize>() + std::mem::size_of::<Value>()) as i64;

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
fn flush_papaya<V>(map: &papaya::HashMap<u64, V, Hasher>) {
    use papaya::Guard as _;
    for _ in 0..64 {
        map.guard().flush();
    }
    flush_deferred();
}

// ---------------------------------------------------------------------------------------------
// One measurement.

/// The value of key `k`: an allocation of its own.
fn value(k: u64) -> Val {
    Arc::new([k as u8; 64])
}

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

    fn allocs_per_entry(&self) -> f64 {
        self.after_flush.allocs as f64 / self.entries.max(1) as f64
    }
}

/// Builds a map with `build`, fills it with `n` keys through `insert`, and reads the live
/// bytes at each step. `len` counts what the map holds; `flush` frees its deferred garbage.
fn measure<M>(
    name: &'static str,
    n: u64,
    build: impl FnOnce() -> M,
    insert: impl Fn(&M, u64, Val),
    len: impl Fn(&M) -> usize,
    flush: impl Fn(&M),
) -> Figures {
    flush_deferred();
    let before = Live::now();
    let start = Instant::now();
    let map = build();
    for k in 0..n {
        insert(&map, k, value(k));
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

/// caskv, then every key overwritten once with a new value allocation: live bytes right after
/// the overwrite and after a flush, over the fresh fill's.
fn caskv_overwrite(n: u64) -> (&'static str, f64, f64, f64) {
    flush_deferred();
    let before = Live::now();
    let store: Store<u64, Val> = Store::new();
    for k in 0..n {
        store.set(k, value(k));
    }
    flush_deferred();
    let fresh = Live::now().since(before).bytes;
    for k in 0..n {
        store.set(k, value(k + 1));
    }
    let right_after = Live::now().since(before).bytes;
    flush_deferred();
    let flushed = Live::now().since(before).bytes;
    drop(store);
    let per = |b: i64| b as f64 / n as f64;
    ("caskv", per(fresh), per(right_after), per(flushed))
}

/// The same for papaya, whose `insert` retires the replaced entry to its own collector.
fn papaya_overwrite(n: u64) -> (&'static str, f64, f64, f64) {
    flush_deferred();
    let before = Live::now();
    let map: papaya::HashMap<u64, Val, Hasher> =
        papaya::HashMap::builder().hasher(Hasher::default()).build();
    for k in 0..n {
        map.pin().insert(k, value(k));
    }
    flush_papaya(&map);
    let fresh = Live::now().since(before).bytes;
    for k in 0..n {
        map.pin().insert(k, value(k + 1));
    }
    let right_after = Live::now().since(before).bytes;
    flush_papaya(&map);
    let flushed = Live::now().since(before).bytes;
    drop(map);
    let per = |b: i64| b as f64 / n as f64;
    ("papaya", per(fresh), per(right_after), per(flushed))
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = if bench { 1_000_000 } else { 10_000 };
    let started = Instant::now();
    println!(
        "caskv memory bench: {n} entries, u64 keys, each value its own Arc<[u8; 64]> ({VALUE_BYTES} B requested)"
    );

    let mut rows = vec![
        measure(
            "caskv Store",
            n,
            Store::<u64, Val>::new,
            |m, k, v| {
                m.set(k, v);
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
        measure(
            "RwLock<HashMap>",
            n,
            || RwLock::new(HashMap::<u64, Val, Hasher>::with_hasher(Hasher::default())),
            |m, k, v| {
                m.write().unwrap_or_else(|e| e.into_inner()).insert(k, v);
            },
            |m| m.read().unwrap_or_else(|e| e.into_inner()).len(),
            |_| flush_deferred(),
        ),
        measure(
            "dashmap",
            n,
            || dashmap::DashMap::<u64, Val, Hasher>::with_hasher(Hasher::default()),
            |m, k, v| {
                m.insert(k, v);
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
        measure(
            "dashmap, (version, value) slots",
            n,
            || dashmap::DashMap::<u64, (u64, Val), Hasher>::with_hasher(Hasher::default()),
            |m, k, v| {
                m.insert(k, (k + 1, v));
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
        measure(
            "scc::HashMap",
            n,
            || scc::HashMap::<u64, Val, Hasher>::with_hasher(Hasher::default()),
            |m, k, v| {
                let _ = m.insert_sync(k, v);
            },
            |m| m.len(),
            |_| flush_deferred(),
        ),
        measure(
            "scc::HashIndex",
            n,
            || scc::HashIndex::<u64, Val, Hasher>::with_hasher(Hasher::default()),
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
                papaya::HashMap::<u64, Val>::builder()
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
                moka::sync::Cache::<u64, Val>::builder()
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
                quick_cache::sync::Cache::<u64, Val, quick_cache::UnitWeighter, Hasher>::with(
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
    ];
    let dash = rows
        .iter()
        .position(|r| r.name == "dashmap")
        .expect("dashmap row");
    // caskv first, then the peers in the order above.
    let dash = rows.remove(dash);
    rows.insert(1, dash);
    let (dash_incl, dash_excl) = (
        rows[1].per_entry(rows[1].after_flush),
        rows[1].per_entry(rows[1].after_flush) - VALUE_BYTES as f64,
    );

    println!();
    println!("### Bytes per entry at {n} entries (live bytes requested from the allocator; value allocation = {VALUE_BYTES} B)");
    println!();
    println!("| map | entries | incl. value, after fill | incl. value, after flush | excl. value (after flush) | incl. value / dashmap | excl. value / dashmap | allocations per entry | left after drop (B) | fill time |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let incl = r.per_entry(r.after_flush);
        let excl = incl - VALUE_BYTES as f64;
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
    let caskv = &rows[0];
    let caskv_incl = caskv.per_entry(caskv.after_flush);
    println!();
    println!(
        "Goal, bytes per entry <= 1.2x dashmap: caskv {:.2}x including the value ({}), {:.2}x excluding it ({}).",
        caskv_incl / dash_incl,
        if caskv_incl / dash_incl <= 1.2 { "met" } else { "NOT met" },
        (caskv_incl - VALUE_BYTES as f64) / dash_excl,
        if (caskv_incl - VALUE_BYTES as f64) / dash_excl <= 1.2 {
            "met"
        } else {
            "NOT met"
        }
    );

    println!();
    println!("### After overwriting every key once with a new value allocation (bytes per entry, incl. value)");
    println!();
    println!("| map | fresh fill (flushed) | right after the overwrite | after a flush | held for reclamation right after |");
    println!("|---|---:|---:|---:|---:|");
    for (name, fresh, right_after, flushed) in [caskv_overwrite(n), papaya_overwrite(n)] {
        println!(
            "| {name} | {fresh:.1} | {right_after:.1} | {flushed:.1} | {:.1} |",
            right_after - flushed
        );
    }
    println!();
    println!(
        "(memory bench finished in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
