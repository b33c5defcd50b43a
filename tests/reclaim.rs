//! Memory is reclaimed: under a churn of inserts, overwrites and deletes the number of live
//! values and the heap return to their level. Counted with a drop counter and a counting global
//! allocator (this test binary's own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

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

// ---------------------------------------------------------------------------------------------
// Freed values run user code (`Drop`): the collector must run it where the store holds nothing.

#[path = "support/watchdog.rs"]
mod watchdog;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use watchdog::within;

/// A value whose `Drop` writes to a store (given by `target`), as a cache's eviction hook
/// or a value holding a handle might.
struct WritesOnDrop {
    target: Option<&'static Store<u64, WritesOnDrop>>,
    key: u64,
}

impl Clone for WritesOnDrop {
    fn clone(&self) -> Self {
        WritesOnDrop {
            target: None,
            key: self.key,
        }
    }
}

impl PartialEq for WritesOnDrop {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Drop for WritesOnDrop {
    fn drop(&mut self) {
        if let Some(store) = self.target.take() {
            store.set(
                self.key,
                WritesOnDrop {
                    target: None,
                    key: self.key,
                },
            );
        }
    }
}

/// A replaced value whose `Drop` writes a key of the same store is freed only where this
/// thread holds no per-key lock: batches that overwrite it finish (the collector used to free
/// inside a batch's release, with its later keys still locked, and the write waited on them
/// forever).
#[test]
fn a_drop_that_writes_the_same_store_never_waits_on_its_own_locks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static STORE: OnceLock<Store<u64, WritesOnDrop>> = OnceLock::new();
    let store = STORE.get_or_init(Store::new);
    within(Duration::from_secs(60), move || {
        let value = |k: u64| WritesOnDrop {
            target: Some(store),
            key: 9 - k % 10,
        };
        for round in 0..2_000u64 {
            let ops = (0..10).map(|k| Op::set(k, value(k + round))).collect();
            store.batch(ops).unwrap();
        }
    });
    caskv::reclaim();
    assert_eq!(store.len(), 10);
}

/// A `Drop` that panics while an outermost pin collects unwinds out of that call with the
/// pin unpublished: the thread is not left pinned, so the epoch (and every other thread's
/// reclamation) goes on.
#[test]
fn a_panicking_drop_does_not_leave_its_thread_pinned() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static ARMED: AtomicBool = AtomicBool::new(false);
    #[derive(Clone)]
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            if ARMED.swap(false, Ordering::SeqCst) {
                panic!("a value's Drop panicked");
            }
        }
    }
    let store: Arc<Store<u64, Bomb>> = Arc::new(Store::new());
    store.set(0, Bomb);
    store.set(0, Bomb); // retires the first
    ARMED.store(true, Ordering::SeqCst);
    // Reads only: a pin's periodic collection step frees the retired bomb, which panics.
    let panicked = (0..100_000u64).any(|_| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.contains_key(&0);
        }))
        .is_err()
    });
    assert!(panicked, "the armed Drop never ran");
    // Another thread's garbage is still freed: nothing is stuck pinned.
    let other = store.clone();
    let pending = std::thread::spawn(move || {
        for i in 0..10_000u64 {
            other.set(100 + i % 8, Bomb);
        }
        caskv::reclaim()
    })
    .join()
    .unwrap();
    assert_eq!(
        pending, 0,
        "retired values held back by a thread left pinned"
    );
}

/// Frees that retire (a `Drop` that writes another store) do not collect again inside the
/// free: a backlog of 50,000 such values is freed on a 256 KiB stack (it used to recurse once
/// per value and overflow it).
#[test]
fn frees_that_retire_do_not_recurse() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static SIDE: OnceLock<Store<u64, WritesOnDrop>> = OnceLock::new();
    let side = SIDE.get_or_init(Store::new);
    let main: Arc<Store<u64, WritesOnDrop>> = Arc::new(Store::new());
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (released_tx, released_rx) = std::sync::mpsc::channel::<()>();
    let pinner = {
        let main = main.clone();
        std::thread::spawn(move || {
            let pinned = main.pin(); // holds the epoch back while the backlog builds
            held_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            drop(pinned);
            released_tx.send(()).unwrap();
        })
    };
    held_rx.recv().unwrap();
    let worker = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            for i in 0..50_000u64 {
                main.set(
                    i % 16,
                    WritesOnDrop {
                        target: Some(side),
                        key: i % 16,
                    },
                );
            }
            done_tx.send(()).unwrap();
            released_rx.recv().unwrap();
            // The first pass frees the backlog (each free writes `side`, retiring a value
            // there); the second frees what the first retired.
            caskv::reclaim();
            caskv::reclaim()
        })
        .unwrap();
    let pending = worker.join().expect("the worker overflowed its stack");
    pinner.join().unwrap();
    assert_eq!(pending, 0, "nodes left pending");
}

/// Runs `write` on a thread that exits while this thread's pin holds back what it retired,
/// so that garbage becomes the collector's orphans; the pin is dropped on return.
fn exit_leaving_orphans(
    store: &Arc<Store<u64, Tracked>>,
    write: impl FnOnce(&Store<u64, Tracked>) + Send + 'static,
) {
    let pinned = store.pin();
    let store = store.clone();
    std::thread::spawn(move || write(&store)).join().unwrap();
    drop(pinned);
}

/// The setup of the orphan tests: the tests serialized, the collector settled, a store with
/// one live value, and the count of live values to come back to.
fn orphan_test_setup() -> (MutexGuard<'static, ()>, Arc<Store<u64, Tracked>>, usize) {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    settle();
    let store: Arc<Store<u64, Tracked>> = Arc::new(Store::new());
    store.set(0, Tracked::new(0));
    let base = LIVE.load(Ordering::Relaxed);
    (serial, store, base)
}

/// A thread that exits with garbage another thread's pin still holds back leaves it to the
/// collector's orphans; it is freed by the next thread that collects, not stranded until some
/// new thread happens to register.
#[test]
fn an_exited_threads_garbage_is_freed_by_the_threads_that_remain() {
    let (_serial, store, base) = orphan_test_setup();
    exit_leaving_orphans(&store, |store| {
        for i in 0..140 {
            store.set(0, Tracked::new(i));
        }
    });
    assert!(
        LIVE.load(Ordering::Relaxed) > base,
        "the writer's garbage was freed while a pin held it back"
    );
    // A thread that never touched a store adopts the orphans and frees them.
    std::thread::spawn(caskv::reclaim).join().unwrap();
    assert_eq!(LIVE.load(Ordering::Relaxed), base);
}

/// Orphans are adopted by the remaining threads' ordinary calls too (a collection step every
/// 256 pins adopts up to 64 and frees them), not only by `reclaim`.
#[test]
fn orphans_are_freed_by_ordinary_reads_of_the_remaining_threads() {
    let (_serial, store, base) = orphan_test_setup();
    exit_leaving_orphans(&store, |store| {
        for i in 0..500 {
            store.set(1 + i % 4, Tracked::new(i));
        }
        for k in 1..5 {
            store.delete(&k).unwrap();
        }
    });
    let mut reads = 0u64;
    while LIVE.load(Ordering::Relaxed) > base && reads < 1_000_000 {
        assert!(store.get(&0).is_some());
        reads += 1;
    }
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        base,
        "orphans still alive after {reads} reads"
    );
}
