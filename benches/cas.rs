//! CAS workloads of issue #6: caskv against the maps a user would otherwise pick, each peer
//! with its most natural compare-and-swap over a `(version, value)` pair.
//!
//! Every peer holds `u64` keys and `(version: u64, Arc<[u8; 64]>)` slots, hashes with
//! `foldhash::fast::RandomState`, and draws each successful write's version from one shared
//! `AtomicU64` (`fetch_add`, like caskv's global index), under the key's lock where it has one:
//!
//! | peer | read of the version | CAS |
//! |---|---|---|
//! | `RwLock<HashMap>` (baseline) | read lock, copy | write lock, compare, replace |
//! | dashmap | `get` | `entry`: compare, replace in the occupied entry |
//! | `scc::HashMap` | `read_sync` | `update_sync` (compare, replace in place) |
//! | papaya | `pin().get` | `pin().compute` (`Insert` or `Abort` with the current version) |
//! | `Mutex<HashMap>` (batches only) | lock once, copy k versions | lock once, check all, write all |
//!
//! caskv reads a version with `pin().get` (a borrow: no reference count touched) and writes
//! with `set_cas`, `set` and `batch`. Each thread writes its own `Arc` of the value, so the
//! value's reference count is not a shared line the peers would not also have.
//!
//! 1. **Uncontended single-key CAS**: each thread reads its own key's version and CASes it, in
//!    a loop (one op = read + CAS; every CAS succeeds).
//! 2. **One hot key**: every thread runs the same read-then-CAS loop on one key. Attempts/s,
//!    successes/s and the success rate come from an untimed run; the latency of each attempt
//!    (p50/p99/p99.9, hdrhistogram per thread, merged) from a second run that reads the clock
//!    around every attempt, so those figures include two clock reads (the "timer floor" line).
//! 3. **Batch CAS of k = 2, 4, 8, 16 keys** over 1K keys, uniform and zipf(0.99): read the k
//!    current versions, then submit a set_cas for all k (caskv `batch`, one `Vec<Op>` per batch
//!    as the API takes it); batches/s and abort rate, against `Mutex<HashMap>`. Then the cost of
//!    a k-key batch against k single-key `set_cas` on caskv, one thread, uncontended, with the
//!    versions kept by the caller (no reads): the goal is a batch ≤ 1.5 × k single CAS.
//!    These costs are per CPU time the thread got, so another process on the core does not
//!    inflate them, and each is the minimum of 5 alternating rounds (one timed run varies by up
//!    to 2× on a shared VM).
//! 4. **Allocations**: a counting `#[global_allocator]` (over `System`; it counts allocations
//!    only while a flag is set, so throughput runs pay one relaxed load per allocation and no
//!    shared write) counts allocations per failing `set_cas` (stale index) and per successful
//!    one, per `set`, and per batch, on the main thread before any bench thread exists; then the
//!    CPU ns per call. A batch's `Vec<Op>` is built outside the counted region, so what is
//!    counted is what `batch` itself allocates.
//!
//! **Epoch garbage.** caskv retires replaced versions (and a batch's lock nodes) to
//! crossbeam-epoch, which frees a few bags per `pin`. Every measurement starts after flushing
//! what earlier runs left, so no run pays for another's garbage; the batch table shows how many
//! MB a run retired and had not reclaimed when it ended (the allocator also keeps live bytes, in
//! a per-thread cell, for this).
//! 5. **All writes**: every thread does unconditional `set` on keys of its own (uniform over
//!    1M keys), against a bare `AtomicU64::fetch_add` loop at the same thread counts: the ceiling
//!    of one shared counter, which every peer here also pays once per write.
//!
//! Run: `cargo bench --bench cas` (1 s per measurement after a 0.2 s warm-up), or
//! `cargo bench --bench cas -- --quick` (0.25 s after 0.05 s; a few minutes at most on 2 cores).
//! Threads are 1 and 2 unless `CASKV_BENCH_THREADS=1,2,4,8,16,32` says otherwise. Without
//! `--bench` on the command line (`cargo test --benches`) every measurement is a few ms long,
//! a smoke test only.
//!
//! Every ratio compares figures of this one process run. Throughputs are per wall-clock second;
//! the CPU share beside them (CPU time the threads got from `/proc/thread-self/schedstat` over
//! threads × wall time) tells when something else held a core: at 0.5 the figure is about half
//! of what an idle machine would give. Nothing is asserted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use caskv::{Op, Store};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

type Hasher = foldhash::fast::RandomState;
type Value = [u8; 64];
/// The value every map holds: one allocation of 16 + 64 bytes, shared.
type Val = Arc<Value>;
/// A peer's slot: the version of the last write and the value.
type Slot = (u64, Val);

// ---------------------------------------------------------------------------------------------
// Counting allocator.

/// Counts allocations while [`COUNTING`] is set, and live bytes always (per thread, see
/// [`LIVE_DELTA`]); forwards everything to the system allocator.
struct Counting;

thread_local! {
    /// Bytes this thread allocated minus bytes it freed since its last [`flush_live`]. Per
    /// thread, so that tracking live bytes in throughput runs writes no shared line. A `const`
    /// initializer and no destructor: accessing it never allocates.
    static LIVE_DELTA: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// Live bytes flushed from every thread's [`LIVE_DELTA`].
static LIVE: AtomicI64 = AtomicI64::new(0);

/// Adds this thread's live-byte delta to [`LIVE`]. Every bench thread calls it when its work
/// ends; what a thread frees after that (its own teardown, some bytes) is not seen.
fn flush_live() {
    let delta = LIVE_DELTA.with(|d| d.replace(0));
    LIVE.fetch_add(delta, Ordering::Relaxed);
}

/// Bytes allocated and not yet freed by the process, as of the last flush of every thread
/// (call on the main thread with no bench thread running).
fn live_bytes() -> i64 {
    flush_live();
    LIVE.load(Ordering::Relaxed)
}

fn track(delta: i64) {
    // `try_with`: never panics, even if called while the thread is being torn down.
    let _ = LIVE_DELTA.try_with(|d| d.set(d.get() + delta));
}

/// Set only around the calls being counted (single-threaded), so throughput runs never write
/// the counters.
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; the counting touches only atomics and a
// thread-local cell and never allocates. `realloc` and `alloc_zeroed` keep their default
// bodies, which call `alloc` (and `dealloc`), so a growing reallocation counts as an allocation
// and the live bytes stay exact.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Relaxed: the flag and the counters are read by the same thread that sets them.
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        track(layout.size() as i64);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as i64));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations counted over some calls.
#[derive(Default, Clone, Copy)]
struct Allocs {
    count: u64,
    bytes: u64,
    calls: u64,
}

impl Allocs {
    /// Runs `f` with counting on and adds what it allocated (one call).
    fn count<R>(&mut self, f: impl FnOnce() -> R) -> R {
        ALLOCS.store(0, Ordering::Relaxed);
        ALLOC_BYTES.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let r = black_box(f());
        COUNTING.store(false, Ordering::Relaxed);
        self.count += ALLOCS.load(Ordering::Relaxed);
        self.bytes += ALLOC_BYTES.load(Ordering::Relaxed);
        self.calls += 1;
        r
    }

    fn per_call(&self) -> f64 {
        self.count as f64 / self.calls.max(1) as f64
    }

    fn cell(&self) -> String {
        format!(
            "{:.3} ({:.0} B)",
            self.per_call(),
            self.bytes as f64 / self.calls.max(1) as f64
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and the timed runner.

struct Config {
    warm_up: Duration,
    measure: Duration,
    threads: Vec<usize>,
    /// Keys of the all-writes run.
    write_keys: u64,
    /// Calls counted per allocation figure.
    alloc_calls: u64,
}

impl Config {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let bench = args.iter().any(|a| a == "--bench");
        let quick = args.iter().any(|a| a == "--quick");
        let threads = std::env::var("CASKV_BENCH_THREADS")
            .ok()
            .map(|s| {
                s.split(',')
                    .filter_map(|t| t.trim().parse().ok())
                    .filter(|&t| t > 0)
                    .collect::<Vec<usize>>()
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| vec![1, 2]);
        let ms = Duration::from_millis;
        match (bench, quick) {
            (false, _) => Config {
                warm_up: ms(1),
                measure: ms(5),
                threads,
                write_keys: 10_000,
                alloc_calls: 1_000,
            },
            (true, true) => Config {
                warm_up: ms(50),
                measure: ms(250),
                threads,
                write_keys: 1_000_000,
                alloc_calls: 100_000,
            },
            (true, false) => Config {
                warm_up: ms(200),
                measure: ms(1000),
                threads,
                write_keys: 1_000_000,
                alloc_calls: 100_000,
            },
        }
    }
}

/// One timed run: wall time from the release of the threads to the last one's end, the CPU
/// time they got, and what each returned.
struct Timed<S> {
    wall: Duration,
    cpu: Duration,
    /// Live bytes after the run minus before it: on a map whose size the run does not change,
    /// memory retired by the run and not yet reclaimed (epoch garbage).
    held: i64,
    threads: usize,
    per_thread: Vec<S>,
}

impl<S> Timed<S> {
    /// CPU time over threads × wall time: 1.0 when every thread had a core throughout.
    fn share(&self) -> f64 {
        self.cpu.as_secs_f64() / (self.wall.as_secs_f64() * self.threads as f64)
    }

    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.wall.as_secs_f64()
    }

    /// Nanoseconds of CPU time per operation.
    fn cpu_ns(&self, n: u64) -> f64 {
        self.cpu.as_nanos() as f64 / n.max(1) as f64
    }
}

/// CPU time this thread has run, from the kernel's scheduler statistics (Linux); zero where
/// unavailable.
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Runs `work(thread, stop)` on `threads` threads released together, raises `stop` after `run`,
/// and collects the results and the times. One thread is a spawned thread too, so every thread
/// count pays the same per-run costs.
fn run_for<S, F>(threads: usize, run: Duration, work: &F) -> Timed<S>
where
    S: Send,
    F: Fn(usize, &AtomicBool) -> S + Sync,
{
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads + 1);
    let live_before = live_bytes();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, barrier) = (&stop, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let (start, cpu) = (Instant::now(), thread_cpu_time());
                    let r = work(t, stop);
                    let (cpu, end) = (thread_cpu_time().saturating_sub(cpu), Instant::now());
                    flush_live();
                    (r, start, end, cpu)
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(run);
        // Relaxed: the threads only need to see it eventually; the joins order the rest.
        stop.store(true, Ordering::Relaxed);
        let (mut cpu, mut first, mut last) = (Duration::ZERO, None::<Instant>, None::<Instant>);
        let per_thread = handles
            .into_iter()
            .map(|h| {
                let (r, start, end, c) = h.join().expect("bench thread panicked");
                cpu += c;
                first = Some(first.map_or(start, |f| f.min(start)));
                last = Some(last.map_or(end, |l| l.max(end)));
                r
            })
            .collect();
        // Wall time: from the first thread's start of work to the last one's end, as the
        // threads saw it (the main thread may wake from the barrier late).
        let wall = match (first, last) {
            (Some(f), Some(l)) => l.duration_since(f),
            _ => Duration::ZERO,
        };
        Timed {
            wall,
            cpu,
            held: live_bytes() - live_before,
            threads,
            per_thread,
        }
    })
}

#[path = "support/epoch.rs"]
mod epoch;

/// Frees what earlier runs retired and not yet reclaimed (see `support/epoch.rs`).
fn settle() {
    epoch::settle_epoch();
}

/// Settles earlier garbage, runs a warm-up (discarded), settles its garbage, then the measured
/// run.
fn measure<S, F>(cfg: &Config, threads: usize, work: F) -> Timed<S>
where
    S: Send,
    F: Fn(usize, &AtomicBool) -> S + Sync,
{
    settle();
    drop(run_for(threads, cfg.warm_up, &work));
    settle();
    run_for(threads, cfg.measure, &work)
}

/// Operations between two looks at the stop flag.
const CHUNK: u64 = 32;

/// Calls `op` until `stop` is raised; returns how many times it ran.
#[inline(always)]
fn until_stopped(stop: &AtomicBool, mut op: impl FnMut()) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..CHUNK {
            op();
        }
        n += CHUNK;
    }
    n
}

/// A value of its own for each thread.
fn value_for(t: usize) -> Val {
    Arc::new([t as u8; 64])
}

/// xorshift64*: a cheap per-thread key stream inside timed loops.
#[inline(always)]
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

// ---------------------------------------------------------------------------------------------
// The stores under test.

/// The shared version counter of a peer, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Clock(AtomicU64);

impl Clock {
    #[inline]
    fn next(&self) -> u64 {
        // Relaxed: a version only needs to be unique and, for one key, taken under that key's
        // lock (or CAS) by its writer; the map's own synchronization publishes it.
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A versioned map with compare-and-swap on the version.
trait CasMap: Sync + Sized {
    const NAME: &'static str;

    /// A map holding keys `0..n`, each written once.
    fn filled(n: u64) -> Self;

    /// The key's current version, 0 if absent.
    fn version(&self, k: u64) -> u64;

    /// Writes `value` at a new version if the key's version is `expected` (0: only if absent);
    /// otherwise returns the current version (0 if absent).
    fn cas(&self, k: u64, value: &Val, expected: u64) -> Result<u64, u64>;

    /// Writes `value` at a new version.
    fn set(&self, k: u64, value: &Val) -> u64;
}

/// The value the fills write (one allocation per key).
fn fill_value(k: u64) -> Val {
    Arc::new([k as u8; 64])
}

struct Caskv(Store<u64, Val>);

impl CasMap for Caskv {
    const NAME: &'static str = "caskv";

    fn filled(n: u64) -> Self {
        let store = Store::new();
        for k in 0..n {
            store.set(k, fill_value(k));
        }
        Caskv(store)
    }

    #[inline]
    fn version(&self, k: u64) -> u64 {
        self.0.pin().get(&k).map_or(0, |e| e.modify_index)
    }

    #[inline]
    fn cas(&self, k: u64, value: &Val, expected: u64) -> Result<u64, u64> {
        self.0
            .set_cas(k, Arc::clone(value), expected)
            .map_err(|e| e.conflict().and_then(|c| c.current_index()).unwrap_or(0))
    }

    #[inline]
    fn set(&self, k: u64, value: &Val) -> u64 {
        self.0.set(k, Arc::clone(value))
    }
}

struct RwLocked {
    map: RwLock<HashMap<u64, Slot, Hasher>>,
    clock: Clock,
}

impl CasMap for RwLocked {
    const NAME: &'static str = "RwLock<HashMap>";

    fn filled(n: u64) -> Self {
        let m = RwLocked {
            map: RwLock::new(HashMap::with_hasher(Hasher::default())),
            clock: Clock::default(),
        };
        for k in 0..n {
            m.set(k, &fill_value(k));
        }
        m
    }

    #[inline]
    fn version(&self, k: u64) -> u64 {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&k).map_or(0, |s| s.0)
    }

    #[inline]
    fn cas(&self, k: u64, value: &Val, expected: u64) -> Result<u64, u64> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&k) {
            Some(slot) if slot.0 == expected => {
                let at = self.clock.next();
                *slot = (at, Arc::clone(value));
                Ok(at)
            }
            Some(slot) => Err(slot.0),
            None if expected == 0 => {
                let at = self.clock.next();
                map.insert(k, (at, Arc::clone(value)));
                Ok(at)
            }
            None => Err(0),
        }
    }

    #[inline]
    fn set(&self, k: u64, value: &Val) -> u64 {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let at = self.clock.next();
        map.insert(k, (at, Arc::clone(value)));
        at
    }
}

struct Dash {
    map: dashmap::DashMap<u64, Slot, Hasher>,
    clock: Clock,
}

impl CasMap for Dash {
    const NAME: &'static str = "dashmap";

    fn filled(n: u64) -> Self {
        let m = Dash {
            map: dashmap::DashMap::with_hasher(Hasher::default()),
            clock: Clock::default(),
        };
        for k in 0..n {
            m.set(k, &fill_value(k));
        }
        m
    }

    #[inline]
    fn version(&self, k: u64) -> u64 {
        self.map.get(&k).map_or(0, |s| s.0)
    }

    #[inline]
    fn cas(&self, k: u64, value: &Val, expected: u64) -> Result<u64, u64> {
        match self.map.entry(k) {
            dashmap::Entry::Occupied(mut o) if o.get().0 == expected => {
                let at = self.clock.next();
                o.insert((at, Arc::clone(value)));
                Ok(at)
            }
            dashmap::Entry::Occupied(o) => Err(o.get().0),
            dashmap::Entry::Vacant(v) if expected == 0 => {
                let at = self.clock.next();
                v.insert((at, Arc::clone(value)));
                Ok(at)
            }
            dashmap::Entry::Vacant(_) => Err(0),
        }
    }

    #[inline]
    fn set(&self, k: u64, value: &Val) -> u64 {
        match self.map.entry(k) {
            dashmap::Entry::Occupied(mut o) => {
                let at = self.clock.next();
                o.insert((at, Arc::clone(value)));
                at
            }
            dashmap::Entry::Vacant(v) => {
                let at = self.clock.next();
                v.insert((at, Arc::clone(value)));
                at
            }
        }
    }
}

struct SccMap {
    map: scc::HashMap<u64, Slot, Hasher>,
    clock: Clock,
}

impl SccMap {
    /// The slow path for a key `update_sync` did not find: through the entry API.
    #[cold]
    fn cas_absent(&self, k: u64, value: &Val, expected: u64) -> Result<u64, u64> {
        match self.map.entry_sync(k) {
            scc::hash_map::Entry::Occupied(mut o) if o.get().0 == expected => {
                let at = self.clock.next();
                o.insert((at, Arc::clone(value)));
                Ok(at)
            }
            scc::hash_map::Entry::Occupied(o) => Err(o.get().0),
            scc::hash_map::Entry::Vacant(v) if expected == 0 => {
                let at = self.clock.next();
                v.insert_entry((at, Arc::clone(value)));
                Ok(at)
            }
            scc::hash_map::Entry::Vacant(_) => Err(0),
        }
    }
}

impl CasMap for SccMap {
    const NAME: &'static str = "scc::HashMap";

    fn filled(n: u64) -> Self {
        let m = SccMap {
            map: scc::HashMap::with_hasher(Hasher::default()),
            clock: Clock::default(),
        };
        for k in 0..n {
            m.set(k, &fill_value(k));
        }
        m
    }

    #[inline]
    fn version(&self, k: u64) -> u64 {
        self.map.read_sync(&k, |_, s| s.0).unwrap_or(0)
    }

    #[inline]
    fn cas(&self, k: u64, value: &Val, expected: u64) -> Result<u64, u64> {
        let updated = self.map.update_sync(&k, |_, slot| {
            if slot.0 == expected {
                let at = self.clock.next();
                *slot = (at, Arc::clone(value));
                Ok(at)
            } else {
                Err(slot.0)
            }
        });
        match updated {
            Some(r) => r,
            None => self.cas_absent(k, value, expected),
        }
    }

    #[inline]
    fn set(&self, k: u64, value: &Val) -> u64 {
        let updated = self.map.update_sync(&k, |_, slot| {
            let at = self.clock.next();
            *slot = (at, Arc::clone(value));
            at
        });
        match updated {
            Some(at) => at,
            None => {
                let at = self.clock.next();
                self.map.entry_sync(k).insert_entry((at, Arc::clone(value)));
                at
            }
        }
    }
}

struct Papaya {
    map: papaya::HashMap<u64, Slot, Hasher>,
    clock: Clock,
}

impl CasMap for Papaya {
    const NAME: &'static str = "papaya";

    fn filled(n: u64) -> Self {
        let m = Papaya {
            map: papaya::HashMap::builder().hasher(Hasher::default()).build(),
            clock: Clock::default(),
        };
        for k in 0..n {
            m.set(k, &fill_value(k));
        }
        m
    }

    #[inline]
    fn version(&self, k: u64) -> u64 {
        self.map.pin().get(&k).map_or(0, |s| s.0)
    }

    #[inline]
    fn cas(&self, k: u64, value: &Val, expected: u64) -> Result<u64, u64> {
        let map = self.map.pin();
        // `compute` may call the closure again after losing a race; each call that decides to
        // write takes a fresh version (a gap, as in caskv after a lost race).
        let outcome = map.compute(k, |entry| match entry {
            Some((_, slot)) if slot.0 != expected => papaya::Operation::Abort(slot.0),
            None if expected != 0 => papaya::Operation::Abort(0),
            _ => papaya::Operation::Insert((self.clock.next(), Arc::clone(value))),
        });
        match outcome {
            papaya::Compute::Inserted(_, slot) => Ok(slot.0),
            papaya::Compute::Updated { new: (_, slot), .. } => Ok(slot.0),
            papaya::Compute::Aborted(current) => Err(current),
            papaya::Compute::Removed(..) => unreachable!("the closure never removes"),
        }
    }

    /// `insert` with the version drawn just before: per-key version order holds with one
    /// writer per key, which is how the all-writes run uses it.
    #[inline]
    fn set(&self, k: u64, value: &Val) -> u64 {
        let at = self.clock.next();
        self.map.pin().insert(k, (at, Arc::clone(value)));
        at
    }
}

/// The batch peer: lock once, check every version, write every key at one new version.
struct Mutexed {
    map: Mutex<HashMap<u64, Slot, Hasher>>,
    clock: Clock,
}

impl Mutexed {
    fn filled(n: u64) -> Self {
        let mut map = HashMap::with_hasher(Hasher::default());
        let clock = Clock::default();
        for k in 0..n {
            map.insert(k, (clock.next(), fill_value(k)));
        }
        Mutexed {
            map: Mutex::new(map),
            clock,
        }
    }

    fn versions(&self, keys: &[u64], out: &mut [u64]) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (o, k) in out.iter_mut().zip(keys) {
            *o = map.get(k).map_or(0, |s| s.0);
        }
    }

    /// Writes every key at one new version if every key is at its expected version; otherwise
    /// returns how many are not.
    fn batch(&self, keys: &[u64], expected: &[u64], value: &Val) -> Result<u64, usize> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let failed = keys
            .iter()
            .zip(expected)
            .filter(|(k, e)| map.get(k).map_or(0, |s| s.0) != **e)
            .count();
        if failed > 0 {
            return Err(failed);
        }
        let at = self.clock.next();
        for k in keys {
            map.insert(*k, (at, Arc::clone(value)));
        }
        Ok(at)
    }
}

// ---------------------------------------------------------------------------------------------
// Table helpers.

fn mops(x: f64) -> String {
    format!("{:.2}", x / 1e6)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".to_string()
    }
}

fn shares(runs: &[f64]) -> String {
    runs.iter()
        .map(|s| format!("{s:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn thread_cols(cfg: &Config, f: impl Fn(usize) -> String) -> String {
    cfg.threads
        .iter()
        .map(|&t| f(t))
        .collect::<Vec<_>>()
        .join(" | ")
}

// ---------------------------------------------------------------------------------------------
// 1. Uncontended single-key CAS.

/// Keys every CAS map is filled with for workloads 1, 2 and 4.
const SMALL_KEYS: u64 = 1024;

/// Per thread count: read-then-CAS pairs per second and the CPU share.
struct Row {
    name: &'static str,
    rates: Vec<f64>,
    shares: Vec<f64>,
}

impl Row {
    fn new(name: &'static str) -> Self {
        Row {
            name,
            rates: vec![],
            shares: vec![],
        }
    }

    fn push<S>(&mut self, run: &Timed<S>, ops: u64) {
        self.rates.push(run.per_sec(ops));
        self.shares.push(run.share());
    }
}

fn uncontended<M: CasMap>(cfg: &Config) -> Row {
    let map = M::filled(SMALL_KEYS);
    let mut row = Row::new(M::NAME);
    for &threads in &cfg.threads {
        let run = measure(cfg, threads, |t, stop| {
            let (k, value) = ((t as u64 * 7) % SMALL_KEYS, value_for(t));
            let mut failed = 0u64;
            let n = until_stopped(stop, || {
                let v = map.version(k);
                failed += u64::from(map.cas(k, &value, v).is_err());
            });
            assert_eq!(failed, 0, "{}: an uncontended CAS failed", M::NAME);
            n
        });
        row.push(&run, run.per_thread.iter().sum());
    }
    row
}

fn print_uncontended(cfg: &Config, rows: &[Row]) {
    println!();
    println!("### 1. Uncontended single-key CAS (each thread reads its own key's version, then CASes it; M ops/s, one op = read + CAS)");
    println!();
    println!(
        "| peer | {} | {} | CPU share ({}) |",
        thread_cols(cfg, |t| format!("{t}t")),
        thread_cols(cfg, |t| format!("caskv/peer {t}t")),
        thread_cols(cfg, |t| format!("{t}t")).replace(" | ", " / ")
    );
    println!("|---|{}", "---:|".repeat(2 * cfg.threads.len() + 1));
    let caskv = &rows[0];
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.name,
            row.rates
                .iter()
                .map(|&r| mops(r))
                .collect::<Vec<_>>()
                .join(" | "),
            row.rates
                .iter()
                .zip(&caskv.rates)
                .map(|(&p, &c)| ratio(c, p))
                .collect::<Vec<_>>()
                .join(" | "),
            shares(&row.shares)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. One hot key.

const HOT: u64 = 0;

struct HotRow {
    name: &'static str,
    attempts_per_sec: f64,
    successes_per_sec: f64,
    success_rate: f64,
    share: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    latency_share: f64,
}

/// Per-attempt latency histogram: 1 ns to 10 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds")
}

fn hot_key<M: CasMap>(cfg: &Config) -> Vec<HotRow> {
    let map = M::filled(SMALL_KEYS);
    let mut rows = vec![];
    for &threads in &cfg.threads {
        let attempt = |value: &Val| {
            let v = map.version(HOT);
            map.cas(HOT, value, v).is_ok()
        };
        let run = measure(cfg, threads, |t, stop| {
            let value = value_for(t);
            let mut ok = 0u64;
            let n = until_stopped(stop, || ok += u64::from(attempt(&value)));
            (n, ok)
        });
        let attempts: u64 = run.per_thread.iter().map(|r| r.0).sum();
        let successes: u64 = run.per_thread.iter().map(|r| r.1).sum();
        let timed = measure(cfg, threads, |t, stop| {
            let value = value_for(t);
            let mut h = histogram();
            until_stopped(stop, || {
                let start = Instant::now();
                black_box(attempt(&value));
                h.saturating_record(start.elapsed().as_nanos() as u64);
            });
            h
        });
        let mut h = histogram();
        for t in &timed.per_thread {
            h.add(t).expect("same bounds");
        }
        rows.push(HotRow {
            name: M::NAME,
            attempts_per_sec: run.per_sec(attempts),
            successes_per_sec: run.per_sec(successes),
            success_rate: successes as f64 / attempts.max(1) as f64,
            share: run.share(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            latency_share: timed.share(),
        });
    }
    rows
}

/// p50 of an attempt that does nothing: what two clock reads add to every latency figure.
fn timer_floor(cfg: &Config) -> u64 {
    let run = measure(cfg, 1, |_, stop| {
        let mut h = histogram();
        until_stopped(stop, || {
            let start = Instant::now();
            black_box(());
            h.saturating_record(start.elapsed().as_nanos() as u64);
        });
        h
    });
    run.per_thread[0].value_at_quantile(0.5)
}

fn print_hot_key(cfg: &Config, rows: &[Vec<HotRow>], floor: u64) {
    println!();
    println!("### 2. One hot key under read-then-CAS from every thread");
    println!();
    println!("Attempts/s, successes/s and success rate from an untimed run; latency per attempt (read + CAS) from a second run that reads the clock around each attempt (timer floor: p50 {floor} ns of an empty attempt, included in these figures).");
    println!();
    println!("| threads | peer | attempts (M/s) | successes (M/s) | success rate | p50 ns | p99 ns | p99.9 ns | caskv/peer successes | CPU share (throughput / latency run) |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, &threads) in cfg.threads.iter().enumerate() {
        let caskv = &rows[0][i];
        for peer in rows {
            let r = &peer[i];
            println!(
                "| {threads} | {} | {} | {} | {:.1} % | {} | {} | {} | {} | {:.2} / {:.2} |",
                r.name,
                mops(r.attempts_per_sec),
                mops(r.successes_per_sec),
                r.success_rate * 100.0,
                r.p50,
                r.p99,
                r.p999,
                ratio(caskv.successes_per_sec, r.successes_per_sec),
                r.share,
                r.latency_share
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Batch CAS.

/// Keys of the batch runs.
const BATCH_KEYS: u64 = 1000;
/// Key sets prepared per thread (a power of two), cycled through.
const SETS: usize = 1 << 12;
const KS: [usize; 4] = [2, 4, 8, 16];

#[derive(Clone, Copy, PartialEq)]
enum Keys {
    Uniform,
    Zipf,
}

impl Keys {
    fn label(self) -> &'static str {
        match self {
            Keys::Uniform => "uniform",
            Keys::Zipf => "zipf 0.99",
        }
    }
}

/// `SETS` sets of `k` distinct keys of `0..BATCH_KEYS`, flattened.
fn key_sets(keys: Keys, k: usize, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(BATCH_KEYS as f64, 0.99).expect("zipf parameters");
    let mut out = Vec::with_capacity(SETS * k);
    for _ in 0..SETS {
        let start = out.len();
        while out.len() < start + k {
            let key = match keys {
                Keys::Uniform => rng.random_range(0..BATCH_KEYS),
                Keys::Zipf => zipf.sample(&mut rng) as u64 - 1,
            };
            if !out[start..].contains(&key) {
                out.push(key);
            }
        }
    }
    out
}

struct BatchRun {
    per_sec: f64,
    abort_rate: f64,
    share: f64,
    /// MB retired by the run and not reclaimed when it ended.
    held_mb: f64,
}

fn batch_run(timed: Timed<(u64, u64)>) -> BatchRun {
    let commits: u64 = timed.per_thread.iter().map(|r| r.0).sum();
    let aborts: u64 = timed.per_thread.iter().map(|r| r.1).sum();
    BatchRun {
        per_sec: timed.per_sec(commits + aborts),
        abort_rate: aborts as f64 / (commits + aborts).max(1) as f64,
        share: timed.share(),
        held_mb: timed.held as f64 / 1e6,
    }
}

/// Batches of `k` keys from `sets` on caskv: read the k versions under one pin, then `batch`.
fn caskv_batches(cfg: &Config, threads: usize, sets: &[Vec<u64>], k: usize) -> BatchRun {
    let store = Caskv::filled(BATCH_KEYS).0;
    batch_run(measure(cfg, threads, |t, stop| {
        let (sets, value) = (&sets[t], value_for(t));
        let (mut i, mut commits, mut aborts) = (0usize, 0u64, 0u64);
        until_stopped(stop, || {
            let keys = &sets[(i % SETS) * k..][..k];
            i += 1;
            let ops = {
                let pin = store.pin();
                keys.iter()
                    .map(|&key| {
                        let at = pin.get(&key).map_or(0, |e| e.modify_index);
                        Op::set_cas(key, Arc::clone(&value), at)
                    })
                    .collect()
            };
            match store.batch(ops) {
                Ok(_) => commits += 1,
                Err(e) => {
                    debug_assert!(!e.conflicts().is_empty());
                    aborts += 1;
                }
            }
        });
        (commits, aborts)
    }))
}

/// The same batches on `Mutex<HashMap>`.
fn mutex_batches(cfg: &Config, threads: usize, sets: &[Vec<u64>], k: usize) -> BatchRun {
    let map = Mutexed::filled(BATCH_KEYS);
    batch_run(measure(cfg, threads, |t, stop| {
        let (sets, value) = (&sets[t], value_for(t));
        let (mut i, mut commits, mut aborts) = (0usize, 0u64, 0u64);
        let mut expected = [0u64; 16];
        until_stopped(stop, || {
            let keys = &sets[(i % SETS) * k..][..k];
            i += 1;
            map.versions(keys, &mut expected[..k]);
            match map.batch(keys, &expected[..k], &value) {
                Ok(_) => commits += 1,
                Err(_) => aborts += 1,
            }
        });
        (commits, aborts)
    }))
}

/// Rounds of [`batch_cost`]: each takes one figure of each kind, alternately, and the result is
/// the minimum of each kind over the rounds (the run least disturbed by the rest of a shared
/// machine, as `hot_ops` does): one timed run of either varies by up to 2× on a 2-vCPU VM.
const COST_ROUNDS: usize = 5;

/// Single-thread CPU ns per `set_cas` and per k-key batch on caskv, uncontended, the caller
/// keeping every key's current version (no reads): the minimum of each over
/// [`COST_ROUNDS`] alternating rounds.
fn batch_cost(cfg: &Config, k: usize, sets: &[u64]) -> (f64, f64, f64) {
    let store = Caskv::filled(BATCH_KEYS).0;
    let current = |store: &Store<u64, Val>| -> Vec<u64> {
        (0..BATCH_KEYS)
            .map(|key| store.pin().get(&key).map_or(0, |e| e.modify_index))
            .collect()
    };
    let (mut single_ns, mut batch_ns, mut held) = (f64::INFINITY, f64::INFINITY, 0.0);
    for _ in 0..COST_ROUNDS {
        let single = measure(cfg, 1, |t, stop| {
            let (mut idx, value, mut i) = (current(&store), value_for(t), 0usize);
            until_stopped(stop, || {
                let key = sets[i % sets.len()];
                i += 1;
                let at = store.set_cas(key, Arc::clone(&value), idx[key as usize]);
                idx[key as usize] = at.expect("set_cas at the current version");
            })
        });
        let batch = measure(cfg, 1, |t, stop| {
            let (mut idx, value, mut i) = (current(&store), value_for(t), 0usize);
            until_stopped(stop, || {
                let keys = &sets[(i % SETS) * k..][..k];
                i += 1;
                let ops = keys
                    .iter()
                    .map(|&key| Op::set_cas(key, Arc::clone(&value), idx[key as usize]))
                    .collect();
                let at = store.batch(ops).expect("batch at the current versions");
                for &key in keys {
                    idx[key as usize] = at;
                }
            })
        });
        single_ns = single_ns.min(single.cpu_ns(single.per_thread[0]));
        batch_ns = batch_ns.min(batch.cpu_ns(batch.per_thread[0]));
        held = batch.held as f64 / 1e6;
    }
    (single_ns, batch_ns, held)
}

fn batches(cfg: &Config) {
    println!();
    println!("### 3. Batch CAS of k keys over {BATCH_KEYS} keys (read the k versions, then set_cas all k at once; batches/s counts commits and aborts)");
    println!();
    println!("| keys | k | threads | caskv batches (K/s) | caskv abort rate | Mutex<HashMap> batches (K/s) | Mutex abort rate | caskv/Mutex | caskv retired, unreclaimed at the end (MB) | CPU share (caskv / Mutex) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let max_threads = cfg.threads.iter().copied().max().unwrap_or(1);
    let mut costs = vec![];
    for keys in [Keys::Uniform, Keys::Zipf] {
        for k in KS {
            let sets: Vec<Vec<u64>> = (0..max_threads)
                .map(|t| key_sets(keys, k, 1 + t as u64 * 1000 + k as u64))
                .collect();
            for &threads in &cfg.threads {
                let c = caskv_batches(cfg, threads, &sets, k);
                let m = mutex_batches(cfg, threads, &sets, k);
                println!(
                    "| {} | {k} | {threads} | {:.0} | {:.2} % | {:.0} | {:.2} % | {} | {:.0} | {:.2} / {:.2} |",
                    keys.label(),
                    c.per_sec / 1e3,
                    c.abort_rate * 100.0,
                    m.per_sec / 1e3,
                    m.abort_rate * 100.0,
                    ratio(c.per_sec, m.per_sec),
                    c.held_mb,
                    c.share,
                    m.share
                );
            }
            if keys == Keys::Uniform {
                costs.push((k, batch_cost(cfg, k, &sets[0])));
            }
        }
    }
    println!();
    println!("#### A k-key batch against k single-key set_cas (caskv, 1 thread, uncontended, uniform keys, versions kept by the caller; CPU ns, minimum of {COST_ROUNDS} alternating rounds)");
    println!();
    println!("| k | ns per batch | ns per single set_cas | k x single | batch / (k x single) | goal <= 1.5x | retired, unreclaimed after the batch run (MB) |");
    println!("|---:|---:|---:|---:|---:|---|---:|");
    for (k, (single, batch, held)) in costs {
        let r = batch / (k as f64 * single);
        println!(
            "| {k} | {batch:.0} | {single:.1} | {:.0} | {r:.2}x | {} | {held:.0} |",
            k as f64 * single,
            if r <= 1.5 { "met" } else { "NOT met" }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Allocations.

/// Allocation counts and CPU ns per call of one peer.
struct AllocRow {
    name: &'static str,
    stale: Allocs,
    stale_ns: f64,
    ok: Allocs,
    ok_ns: f64,
    set: Allocs,
    set_ns: f64,
}

/// Counts allocations per call of one peer. Runs on the main thread before any bench thread
/// has been spawned: crossbeam-epoch unlinks the registrations of exited threads during a later
/// pin's collection and defers their frees, which now and then allocates a 2 KB bag, and that
/// housekeeping of thread churn is not the cost of a CAS.
fn alloc_counts<M: CasMap>(cfg: &Config) -> AllocRow {
    let map = M::filled(SMALL_KEYS);
    let value = value_for(0);
    let key = |i: u64| (i * 7) % SMALL_KEYS;
    // One below the current version: for the key at version 1 that is 0, create-only, which
    // fails on a present key too.
    let stale: Vec<u64> = (0..SMALL_KEYS).map(|k| map.version(k) - 1).collect();
    let mut idx: Vec<u64> = (0..SMALL_KEYS).map(|k| map.version(k)).collect();

    // Warm up the thread's epoch registrations outside the counts.
    for i in 0..1000 {
        let k = key(i);
        idx[k as usize] = map.cas(k, &value, idx[k as usize]).expect("current");
    }
    let (mut a_stale, mut a_ok, mut a_set) =
        (Allocs::default(), Allocs::default(), Allocs::default());
    for i in 0..cfg.alloc_calls {
        let k = key(i);
        let r = a_stale.count(|| map.cas(k, &value, stale[k as usize]));
        assert!(r.is_err(), "{}: a stale CAS succeeded", M::NAME);
    }
    for i in 0..cfg.alloc_calls {
        let k = key(i);
        let at = a_ok.count(|| map.cas(k, &value, idx[k as usize]));
        idx[k as usize] = at.expect("CAS at the current version");
    }
    for i in 0..cfg.alloc_calls {
        let k = key(i);
        idx[k as usize] = a_set.count(|| map.set(k, &value));
    }
    AllocRow {
        name: M::NAME,
        stale: a_stale,
        stale_ns: 0.0,
        ok: a_ok,
        ok_ns: 0.0,
        set: a_set,
        set_ns: 0.0,
    }
}

/// CPU ns per call of the operations [`alloc_counts`] counted, one thread.
fn call_costs<M: CasMap>(cfg: &Config, row: &mut AllocRow) {
    let map = M::filled(SMALL_KEYS);
    let value = value_for(0);
    let key = |i: u64| (i * 7) % SMALL_KEYS;
    let stale: Vec<u64> = (0..SMALL_KEYS).map(|k| map.version(k) - 1).collect();
    let stale_run = measure(cfg, 1, |_, stop| {
        let mut i = 0;
        until_stopped(stop, || {
            let k = key(i);
            i += 1;
            black_box(map.cas(k, &value, stale[k as usize]).is_err());
        })
    });
    let ok_run = measure(cfg, 1, |_, stop| {
        // The warm-up run moved the versions on: start from the current ones.
        let (mut i, mut idx) = (
            0,
            (0..SMALL_KEYS).map(|k| map.version(k)).collect::<Vec<_>>(),
        );
        until_stopped(stop, || {
            let k = key(i);
            i += 1;
            idx[k as usize] = map.cas(k, &value, idx[k as usize]).expect("current");
        })
    });
    let set_run = measure(cfg, 1, |_, stop| {
        let mut i = 0;
        until_stopped(stop, || {
            let k = key(i);
            i += 1;
            black_box(map.set(k, &value));
        })
    });
    row.stale_ns = stale_run.cpu_ns(stale_run.per_thread[0]);
    row.ok_ns = ok_run.cpu_ns(ok_run.per_thread[0]);
    row.set_ns = set_run.cpu_ns(set_run.per_thread[0]);
}

/// Allocations per caskv `batch` of `k` set_cas: all at the current version (commits), and
/// with the first one stale (aborts). The `Vec<Op>` is built outside the counted region.
fn batch_allocations(cfg: &Config, k: usize) -> (Allocs, Allocs) {
    let store = Caskv::filled(SMALL_KEYS).0;
    let value = value_for(0);
    let mut idx: Vec<u64> = (0..SMALL_KEYS)
        .map(|key| store.pin().get(&key).map_or(0, |e| e.modify_index))
        .collect();
    let keys = |i: u64| (0..k as u64).map(move |j| (i * k as u64 + j) % SMALL_KEYS);
    let (mut ok, mut failed) = (Allocs::default(), Allocs::default());
    let calls = cfg.alloc_calls / k as u64;
    for i in 0..calls + 100 {
        let ops = keys(i)
            .map(|key| Op::set_cas(key, Arc::clone(&value), idx[key as usize]))
            .collect();
        // The first 100 warm up, uncounted.
        let at = if i < 100 {
            store.batch(ops)
        } else {
            ok.count(|| store.batch(ops))
        };
        let at = at.expect("batch at the current versions");
        keys(i).for_each(|key| idx[key as usize] = at);
    }
    for i in 0..calls {
        // The first key one below its current version, the others current.
        let ops = keys(i)
            .enumerate()
            .map(|(j, key)| {
                let stale = u64::from(j == 0);
                Op::set_cas(key, Arc::clone(&value), idx[key as usize] - stale)
            })
            .collect();
        let r = failed.count(|| store.batch(ops));
        assert!(r.is_err(), "a batch with a stale version committed");
    }
    (ok, failed)
}

fn print_allocations(cfg: &Config, rows: &[AllocRow], batch_rows: &[(usize, Allocs, Allocs)]) {
    println!();
    println!("### 4. Allocations per call (counting global allocator; 1 thread, {SMALL_KEYS} keys, {} calls each) and CPU ns per call", cfg.alloc_calls);
    println!();
    let caskv = &rows[0];
    let verdict = if caskv.stale.count == 0 {
        "does NOT allocate".to_string()
    } else {
        format!(
            "ALLOCATES ({:.3} allocations per call)",
            caskv.stale.per_call()
        )
    };
    println!(
        "**caskv: a failing set_cas (stale index) {verdict}: {} allocations in {} calls, {:.1} ns per call. A successful set_cas: {} allocations in {} calls ({:.3} per call), {:.1} ns per call.**",
        caskv.stale.count,
        caskv.stale.calls,
        caskv.stale_ns,
        caskv.ok.count,
        caskv.ok.calls,
        caskv.ok.per_call(),
        caskv.ok_ns
    );
    println!();
    println!("Allocations per call (bytes per call):");
    println!();
    let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    println!("| operation | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(names.len()));
    let line = |label: &str, f: &dyn Fn(&AllocRow) -> String| {
        println!(
            "| {label} | {} |",
            rows.iter().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    line("CAS, stale version (fails)", &|r| r.stale.cell());
    line("CAS, current version (succeeds)", &|r| r.ok.cell());
    line("set (unconditional)", &|r| r.set.cell());
    for (k, ok, failed) in batch_rows {
        let dash = " | -".repeat(names.len() - 1);
        println!(
            "| batch of {k} set_cas, all current (commits) | {}{dash} |",
            ok.cell()
        );
        println!(
            "| batch of {k} set_cas, one stale (aborts; the error lists the conflicts) | {}{dash} |",
            failed.cell()
        );
    }
    println!();
    println!("CPU ns per call:");
    println!();
    println!("| operation | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(names.len()));
    line("CAS, stale version (fails)", &|r| {
        format!("{:.1}", r.stale_ns)
    });
    line("CAS, current version (succeeds)", &|r| {
        format!("{:.1}", r.ok_ns)
    });
    line("set (unconditional)", &|r| format!("{:.1}", r.set_ns));
}

// ---------------------------------------------------------------------------------------------
// 5. All writes and the counter's ceiling.

fn all_writes<M: CasMap>(cfg: &Config) -> Row {
    let map = M::filled(cfg.write_keys);
    let mut row = Row::new(M::NAME);
    for &threads in &cfg.threads {
        let per_thread = (cfg.write_keys / threads as u64).max(1);
        let run = measure(cfg, threads, |t, stop| {
            let value = value_for(t);
            let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
            until_stopped(stop, || {
                // Keys of this thread: t, t + threads, t + 2 threads, …
                let k = (next_random(&mut rng) % per_thread) * threads as u64 + t as u64;
                black_box(map.set(k, &value));
            })
        });
        row.push(&run, run.per_thread.iter().sum());
    }
    row
}

fn counter_ceiling(cfg: &Config) -> Row {
    let clock = Clock::default();
    let mut row = Row::new("AtomicU64::fetch_add");
    for &threads in &cfg.threads {
        let run = measure(cfg, threads, |_, stop| {
            until_stopped(stop, || {
                black_box(clock.next());
            })
        });
        row.push(&run, run.per_thread.iter().sum());
    }
    row
}

fn print_all_writes(cfg: &Config, rows: &[Row], counter: &Row) {
    println!();
    println!(
        "### 5. All writes: unconditional set on each thread's own keys, uniform over {} keys (M ops/s), against the bare counter",
        cfg.write_keys
    );
    println!();
    let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    println!(
        "| threads | {} | {} | caskv/best peer | caskv/counter | CPU share (caskv / counter) |",
        names.join(" | "),
        counter.name
    );
    println!("|---:|{}---:|---:|---:|---:|", "---:|".repeat(names.len()));
    for (i, &threads) in cfg.threads.iter().enumerate() {
        let caskv = rows[0].rates[i];
        let best_peer = rows[1..].iter().map(|r| r.rates[i]).fold(0.0, f64::max);
        println!(
            "| {threads} | {} | {} | {} | {} | {:.2} / {:.2} |",
            rows.iter()
                .map(|r| mops(r.rates[i]))
                .collect::<Vec<_>>()
                .join(" | "),
            mops(counter.rates[i]),
            ratio(caskv, best_peer),
            ratio(caskv, counter.rates[i]),
            rows[0].shares[i],
            counter.shares[i]
        );
    }
    let scaling = |r: &Row| {
        let first = r.rates[0];
        r.rates
            .iter()
            .map(|x| format!("{:.2}", x / first))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!();
    println!(
        "Scaling against {} thread(s) ({}): caskv {}, counter {}.",
        cfg.threads[0],
        thread_cols(cfg, |t| format!("{t}t")).replace(" | ", " / "),
        scaling(&rows[0]),
        scaling(counter)
    );
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let cfg = Config::from_args();
    let started = Instant::now();
    // Allocation counts first, before any bench thread exists (see `alloc_counts`).
    let mut alloc_rows = vec![
        alloc_counts::<Caskv>(&cfg),
        alloc_counts::<RwLocked>(&cfg),
        alloc_counts::<Dash>(&cfg),
        alloc_counts::<SccMap>(&cfg),
        alloc_counts::<Papaya>(&cfg),
    ];
    let batch_rows: Vec<_> = [4, 16]
        .into_iter()
        .map(|k| {
            let (ok, failed) = batch_allocations(&cfg, k);
            (k, ok, failed)
        })
        .collect();

    println!(
        "caskv CAS bench: threads {:?}, {:?} per measurement after {:?} warm-up, {} cores available",
        cfg.threads,
        cfg.measure,
        cfg.warm_up,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let rows = vec![
        uncontended::<Caskv>(&cfg),
        uncontended::<RwLocked>(&cfg),
        uncontended::<Dash>(&cfg),
        uncontended::<SccMap>(&cfg),
        uncontended::<Papaya>(&cfg),
    ];
    print_uncontended(&cfg, &rows);

    let floor = timer_floor(&cfg);
    let rows = vec![
        hot_key::<Caskv>(&cfg),
        hot_key::<RwLocked>(&cfg),
        hot_key::<Dash>(&cfg),
        hot_key::<SccMap>(&cfg),
        hot_key::<Papaya>(&cfg),
    ];
    print_hot_key(&cfg, &rows, floor);

    batches(&cfg);

    call_costs::<Caskv>(&cfg, &mut alloc_rows[0]);
    call_costs::<RwLocked>(&cfg, &mut alloc_rows[1]);
    call_costs::<Dash>(&cfg, &mut alloc_rows[2]);
    call_costs::<SccMap>(&cfg, &mut alloc_rows[3]);
    call_costs::<Papaya>(&cfg, &mut alloc_rows[4]);
    print_allocations(&cfg, &alloc_rows, &batch_rows);

    let rows = vec![
        all_writes::<Caskv>(&cfg),
        all_writes::<RwLocked>(&cfg),
        all_writes::<Dash>(&cfg),
        all_writes::<SccMap>(&cfg),
        all_writes::<Papaya>(&cfg),
    ];
    let counter = counter_ceiling(&cfg);
    print_all_writes(&cfg, &rows, &counter);

    println!();
    println!(
        "(cas bench finished in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
