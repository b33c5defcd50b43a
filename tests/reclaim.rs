//! Memory is reclaimed: under a churn of inserts, overwrites and deletes the number of live
//! values and the heap return to their level. Counted with a drop counter and a counting global
//! allocator (this test binary's own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Mutex;

use caskv::{Op, Store};

/// Counts the bytes currently allocated by this process.
struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests here measure process-wide state, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A value that counts how many of its kind are alive.
#[derive(PartialEq, Debug)]
struct Tracked(#[allow(dead_code)] u64);

impl Tracked {
    fn new(n: u64) -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Tracked(n)
    }
}

impl Clone for Tracked {
    /// A clone is one more live value (reads clone values out of the store).
    fn clone(&self) -> Self {
        Tracked::new(self.0)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Frees what this thread retired (no other thread is pinned here, so everything).
fn settle() {
    caskv::reclaim();
}

fn churn(store: &Store<u64, Tracked>, round: u64, keys: u64) {
    let base = round * keys;
    for k in base..base + keys {
        store.set(k, Tracked::new(k));
    }
    for k in base..base + keys {
        store.set(k, Tracked::new(k + 1)); // overwrite: retires a version
    }
    for chunk in (base..base + keys).collect::<Vec<_>>().chunks(4) {
        let ops = chunk.iter().map(|&k| Op::set(k, Tracked::new(k))).collect();
        store.batch(ops).unwrap(); // batch: retires lock nodes and versions
    }
    for k in base..base + keys {
        store.delete(&k).unwrap(); // delete: retires the cell and its last version
    }
}

#[test]
fn retired_values_are_dropped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store: Store<u64, Tracked> = Store::new();
    let hot = 64;
    for k in 0..hot {
        store.set(u64::MAX - k, Tracked::new(k)); // stays present throughout
    }
    for round in 0..20 {
        churn(&store, round, 2_000);
    }
    settle();
    let live = LIVE.load(Ordering::Relaxed);
    // 160k values were created and 159,936 retired; with no other thread pinned, `reclaim`
    // frees every retired one: only the present keys' values stay alive.
    assert_eq!(live, hot as usize, "values alive after churn and reclaim");
    drop(store);
    settle();
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        0,
        "dropping the store drops every value"
    );
}

#[test]
fn heap_returns_to_its_level_under_churn() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store: Store<u64, Tracked> = Store::new();
    churn(&store, 0, 5_000); // warm up: tables and bags reach their working size
    settle();
    let warm = ALLOCATED.load(Ordering::Relaxed);
    for round in 1..30 {
        churn(&store, round, 5_000);
    }
    settle();
    let after = ALLOCATED.load(Ordering::Relaxed);
    let growth = after - warm;
    eprintln!("heap after warm-up {warm} B, after 29 more rounds {after} B (growth {growth} B)");
    // Without reclamation, 29 rounds × 5,000 keys × (cell + 3 versions + values) would add
    // tens of megabytes; allow a small fixed slack for allocator and collector state.
    assert!(
        growth < 2 * 1024 * 1024,
        "heap grew by {growth} B under churn"
    );
    assert!(store.is_empty());
}

/// Writes made while the thread holds a `Pinned` handle (so their pins nest and none of them
/// publishes an epoch) are still reclaimed as they go: each retire frees a couple of expired
/// nodes, and what a session retires expires a few sessions later.
#[test]
fn writes_inside_a_held_handle_are_reclaimed_as_they_go() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store: Store<u64, Tracked> = Store::new();
    let keys = 1_000u64;
    for k in 0..keys {
        store.set(k, Tracked::new(k));
    }
    settle();
    let mut peak = 0;
    for session in 0..400u64 {
        let held = store.pin();
        for i in 0..256u64 {
            let k = (session * 256 + i) % keys;
            store.set(k, Tracked::new(i)); // retires the value it replaces
            assert!(held.get(&k).is_some());
        }
        drop(held);
        peak = peak.max(LIVE.load(Ordering::Relaxed));
    }
    // 102,400 overwrites; what is alive at any session's end is the 1,000 present values plus
    // what the collector has not reached yet, bounded by a few flushes' worth.
    assert!(
        peak <= keys as usize + 8_192,
        "{peak} values alive at a session's end: retired values pile up"
    );
    drop(store);
    settle();
}
