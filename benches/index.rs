//! The candidate key → cell index maps, measured in isolation (no caskv code involved):
//! `papaya::HashMap`, `dashmap::DashMap`, `scc::HashIndex` and `scc::HashMap`, all keyed by `u64`
//! with `foldhash::fast::RandomState` and holding a 16-byte stand-in for a cell.
//!
//! - `read/<size>`: hot reads of random present keys at 1 and 2 threads, through each map's
//!   natural read API. Throughput is lookups/s summed over the threads, so 2t against 1t is the
//!   scaling. papaya and `scc::HashIndex` are measured twice: guard taken once per run of
//!   lookups (what `Store::pin` + `Pinned::get` does) and guard taken per lookup (what
//!   `Store::get` does).
//! - `read/<size>/papaya(filled-by-get_or_insert_with)`: the same papaya read, on a map filled
//!   through `get_or_insert_with` with a guard per key, which is how caskv's write path fills
//!   its index. In papaya 0.2.5 that path (`compute`) does not help an incremental resize along,
//!   so a map grown only through it keeps unfinished resizes and long probe sequences.
//! - `read/<size>/scc-HashIndex<Box<cell>>`: `HashIndex` may relocate a value on resize and
//!   `peek` may then return the old copy, so cells CASed in place (caskv's) would have to sit
//!   behind a pointer; this path measures that layout (one more dependent load per lookup).
//! - `churn/<size>`: insert of an absent key then its removal, one thread, guard per operation.
//!
//! Run with `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench index`. The configuration
//! is quick by default (1 s warm-up, 2 s measurement, 20 samples per benchmark); set
//! `CASKV_BENCH_LONG=1` for 3 s / 5 s / 100 samples. At the end the bench prints a summary
//! table (reads/s at 1 and 2 threads, 2t/1t scaling, churn ns/op) computed from every timed
//! run of this process, so all ratios compare figures measured in the same run, together with
//! the CPU time the bench threads actually got, since a shared 2-core machine often lends one
//! of its cores to something else.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

type Hasher = foldhash::fast::RandomState;

/// Stand-in for caskv's `Cell`: an atomic head word and one more word, 16 bytes.
struct CellStub {
    head: AtomicU64,
    meta: u64,
}

impl CellStub {
    fn new(k: u64) -> Self {
        CellStub {
            head: AtomicU64::new(k),
            meta: k.rotate_left(17),
        }
    }

    /// What a reader does with the cell once found: one Acquire load of the head.
    #[inline]
    fn read(&self) -> u64 {
        self.head.load(Ordering::Acquire) ^ self.meta
    }
}

/// splitmix64: a deterministic source of random key orders.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Present keys (`0..n`) in random order; the length is a power of two.
fn lookup_order(n: u64, len: usize) -> Vec<u64> {
    let mut s = n;
    (0..len).map(|_| splitmix(&mut s) % n).collect()
}

// ---------------------------------------------------------------------------------------------
// Figures kept for the summary: total operations, wall time and CPU time of every timed run.

#[derive(Default, Clone, Copy)]
struct Total {
    ops: u64,
    wall: Duration,
    /// CPU time the benchmark threads actually got (from `/proc/thread-self/schedstat`).
    cpu: Duration,
}

type Totals = BTreeMap<String, Total>;

static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

fn record(id: &str, ops: u64, wall: Duration, cpu: Duration) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = totals.entry(id.to_string()).or_default();
    slot.ops += ops;
    slot.wall += wall;
    slot.cpu += cpu;
}

/// Operations per second of wall time recorded for `id`, if it ran.
fn rate(totals: &Totals, id: &str) -> Option<f64> {
    totals
        .get(id)
        .filter(|t| t.ops > 0 && !t.wall.is_zero())
        .map(|t| t.ops as f64 / t.wall.as_secs_f64())
}

/// Operations per second of CPU time the threads got, if known.
fn rate_per_cpu(totals: &Totals, id: &str) -> Option<f64> {
    totals
        .get(id)
        .filter(|t| t.ops > 0 && !t.cpu.is_zero())
        .map(|t| t.ops as f64 / t.cpu.as_secs_f64())
}

/// CPU time the threads got over `threads` x wall time: 1.0 when every thread had a core of
/// its own throughout, about 0.5 at 2 threads when something else held one of the 2 cores.
fn cpu_share(totals: &Totals, id: &str, threads: u32) -> Option<f64> {
    totals
        .get(id)
        .filter(|t| !t.cpu.is_zero() && !t.wall.is_zero())
        .map(|t| t.cpu.as_secs_f64() / (t.wall.as_secs_f64() * f64::from(threads)))
}

/// CPU time this thread has run, from the kernel's scheduler statistics (Linux); zero where
/// unavailable, which leaves the CPU columns of the summary empty.
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

// ---------------------------------------------------------------------------------------------
// Running `threads` threads that each do a fixed number of operations.

/// Runs `work(thread)` on `threads` scoped threads released together by a barrier and returns
/// the time from the release to the last thread's end, and the CPU time the threads got for
/// their work. One thread is also a spawned thread, so 1t and 2t pay the same per-run costs
/// (thread start, first guard of a fresh thread).
fn run_threads<F>(threads: usize, work: F) -> (Duration, Duration)
where
    F: Fn(usize) -> u64 + Sync,
{
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    let cpu = thread_cpu_time();
                    black_box(work(t));
                    thread_cpu_time().saturating_sub(cpu)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let cpu = handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .sum();
        (start.elapsed(), cpu)
    })
}

/// One read path: `read(map, keys, start, n)` does `n` lookups of `keys` cyclically from
/// `start` and returns a checksum.
type ReadRun<M> = fn(&M, &[u64], usize, u64) -> u64;

/// Benchmarks one read path at 1 and 2 threads.
fn bench_reads<M: Sync>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    size: &str,
    name: &str,
    map: &M,
    keys: &[u64],
    read: ReadRun<M>,
) {
    for threads in [1usize, 2] {
        let id = format!("{name}/{threads}t");
        let summary_id = format!("read/{size}/{id}");
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(&id, |b| {
            b.iter_custom(|iters| {
                let (elapsed, cpu) = run_threads(threads, |t| {
                    // Each thread starts at its own place in the shared random order.
                    read(map, keys, t * keys.len() / threads, iters)
                });
                record(&summary_id, iters * threads as u64, elapsed, cpu);
                elapsed
            })
        });
    }
}

/// Cycles through `keys` from `start`, `n` times; `keys.len()` is a power of two.
#[inline(always)]
fn each_key(keys: &[u64], start: usize, n: u64, mut f: impl FnMut(u64) -> u64) -> u64 {
    let mask = keys.len() - 1;
    let mut sum = 0u64;
    for i in 0..n as usize {
        sum = sum.wrapping_add(f(keys[(start + i) & mask]));
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// The maps.

type Papaya = papaya::HashMap<u64, CellStub, Hasher>;
type Dash = dashmap::DashMap<u64, CellStub, Hasher>;
type SccIndex = scc::HashIndex<u64, CellStub, Hasher>;
/// `HashIndex` relocates values on resize and `peek` may return an old copy, so a cell that is
/// CASed in place (as caskv's are) would have to live behind a pointer: this is that layout.
type SccIndexBoxed = scc::HashIndex<u64, Box<CellStub>, Hasher>;
type SccMap = scc::HashMap<u64, CellStub, Hasher>;

fn papaya_filled(n: u64) -> Papaya {
    let map = papaya::HashMap::builder().hasher(Hasher::default()).build();
    {
        let m = map.pin();
        for k in 0..n {
            m.insert(k, CellStub::new(k));
        }
    }
    map
}

/// Filled the way caskv's write path fills its index: `get_or_insert_with`, one guard per key.
fn papaya_filled_by_get_or_insert(n: u64) -> Papaya {
    let map = papaya::HashMap::builder().hasher(Hasher::default()).build();
    for k in 0..n {
        let guard = map.guard();
        map.get_or_insert_with(k, || CellStub::new(k), &guard);
    }
    map
}

fn dash_filled(n: u64) -> Dash {
    let map = dashmap::DashMap::with_hasher(Hasher::default());
    for k in 0..n {
        map.insert(k, CellStub::new(k));
    }
    map
}

fn scc_index_filled(n: u64) -> SccIndex {
    let map = scc::HashIndex::with_hasher(Hasher::default());
    for k in 0..n {
        let _ = map.insert_sync(k, CellStub::new(k));
    }
    map
}

fn scc_index_boxed_filled(n: u64) -> SccIndexBoxed {
    let map = scc::HashIndex::with_hasher(Hasher::default());
    for k in 0..n {
        let _ = map.insert_sync(k, Box::new(CellStub::new(k)));
    }
    map
}

fn scc_map_filled(n: u64) -> SccMap {
    let map = scc::HashMap::with_hasher(Hasher::default());
    for k in 0..n {
        let _ = map.insert_sync(k, CellStub::new(k));
    }
    map
}

fn papaya_guard_per_run(map: &Papaya, keys: &[u64], start: usize, n: u64) -> u64 {
    let guard = map.guard();
    each_key(keys, start, n, |k| {
        map.get(&k, &guard).map_or(0, CellStub::read)
    })
}

fn papaya_guard_per_op(map: &Papaya, keys: &[u64], start: usize, n: u64) -> u64 {
    each_key(keys, start, n, |k| {
        let guard = map.guard();
        map.get(&k, &guard).map_or(0, CellStub::read)
    })
}

fn dash_get(map: &Dash, keys: &[u64], start: usize, n: u64) -> u64 {
    each_key(keys, start, n, |k| map.get(&k).map_or(0, |r| r.read()))
}

fn scc_index_guard_per_run(map: &SccIndex, keys: &[u64], start: usize, n: u64) -> u64 {
    let guard = scc::Guard::new();
    each_key(keys, start, n, |k| {
        map.peek(&k, &guard).map_or(0, CellStub::read)
    })
}

fn scc_index_boxed_guard_per_run(map: &SccIndexBoxed, keys: &[u64], start: usize, n: u64) -> u64 {
    let guard = scc::Guard::new();
    each_key(keys, start, n, |k| {
        map.peek(&k, &guard).map_or(0, |c| c.read())
    })
}

fn scc_index_peek_with(map: &SccIndex, keys: &[u64], start: usize, n: u64) -> u64 {
    each_key(keys, start, n, |k| {
        map.peek_with(&k, |_, c| c.read()).unwrap_or(0)
    })
}

fn scc_map_read_sync(map: &SccMap, keys: &[u64], start: usize, n: u64) -> u64 {
    each_key(keys, start, n, |k| {
        map.read_sync(&k, |_, c| c.read()).unwrap_or(0)
    })
}

/// Labels of the read paths, in summary order.
const READ_PATHS: [&str; 8] = [
    "papaya/guard-per-run",
    "papaya/guard-per-op",
    "papaya(filled-by-get_or_insert_with)/guard-per-run",
    "scc-HashIndex/peek-guard-per-run",
    "scc-HashIndex/peek_with",
    "scc-HashIndex<Box<cell>>/peek-guard-per-run",
    "scc-HashMap/read_sync",
    "dashmap/get",
];

/// Table sizes: label, keys, length of the random lookup order (a power of two: 16 Ki
/// lookups stay in L2 for the small table; 1 Mi spread over the big one).
const SIZES: [(&str, u64, usize); 2] = [("1K", 1_000, 1 << 14), ("1M", 1_000_000, 1 << 20)];

fn reads(c: &mut Criterion) {
    for (size, n, order_len) in SIZES {
        let keys = lookup_order(n, order_len);
        let mut group = c.benchmark_group(format!("read/{size}"));
        let [papaya_run, papaya_op, papaya_goiw, scc_run, scc_with, scc_boxed, scc_map, dash] =
            READ_PATHS;
        let g = &mut group;

        let map = papaya_filled(n);
        bench_reads(g, size, papaya_run, &map, &keys, papaya_guard_per_run);
        bench_reads(g, size, papaya_op, &map, &keys, papaya_guard_per_op);
        drop(map);

        let map = papaya_filled_by_get_or_insert(n);
        bench_reads(g, size, papaya_goiw, &map, &keys, papaya_guard_per_run);
        drop(map);

        let map = scc_index_filled(n);
        bench_reads(g, size, scc_run, &map, &keys, scc_index_guard_per_run);
        bench_reads(g, size, scc_with, &map, &keys, scc_index_peek_with);
        drop(map);

        let map = scc_index_boxed_filled(n);
        bench_reads(
            g,
            size,
            scc_boxed,
            &map,
            &keys,
            scc_index_boxed_guard_per_run,
        );
        drop(map);

        let map = scc_map_filled(n);
        bench_reads(g, size, scc_map, &map, &keys, scc_map_read_sync);
        drop(map);

        let map = dash_filled(n);
        bench_reads(g, size, dash, &map, &keys, dash_get);
        drop(map);

        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// Churn: insert an absent key, then remove it, on a table of `n` present keys.

/// Distinct absent keys the churn cycles through (a power of two).
const CHURN_KEYS: u64 = 1 << 16;

fn bench_churn<M>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    size: &str,
    name: &str,
    n: u64,
    map: &M,
    churn: impl Fn(&M, u64),
) {
    let summary_id = format!("churn/{size}/{name}");
    let mut next = 0u64;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let cpu = thread_cpu_time();
            let start = Instant::now();
            for _ in 0..iters {
                churn(map, n + (next & (CHURN_KEYS - 1)));
                next = next.wrapping_add(1);
            }
            let elapsed = start.elapsed();
            record(
                &summary_id,
                iters,
                elapsed,
                thread_cpu_time().saturating_sub(cpu),
            );
            elapsed
        })
    });
}

const CHURN_MAPS: [&str; 4] = ["papaya", "scc-HashIndex", "scc-HashMap", "dashmap"];

fn churn(c: &mut Criterion) {
    for (size, n, _) in SIZES {
        let mut group = c.benchmark_group(format!("churn/{size}"));
        group.throughput(Throughput::Elements(1));

        let map = papaya_filled(n);
        bench_churn(&mut group, size, CHURN_MAPS[0], n, &map, |m, k| {
            let m = m.pin();
            m.insert(k, CellStub::new(k));
            black_box(m.remove(&k).map(CellStub::read));
        });
        drop(map);

        let map = scc_index_filled(n);
        bench_churn(&mut group, size, CHURN_MAPS[1], n, &map, |m, k| {
            let _ = m.insert_sync(k, CellStub::new(k));
            black_box(m.remove_sync(&k));
        });
        drop(map);

        let map = scc_map_filled(n);
        bench_churn(&mut group, size, CHURN_MAPS[2], n, &map, |m, k| {
            let _ = m.insert_sync(k, CellStub::new(k));
            black_box(m.remove_sync(&k).map(|(_, c)| c.read()));
        });
        drop(map);

        let map = dash_filled(n);
        bench_churn(&mut group, size, CHURN_MAPS[3], n, &map, |m, k| {
            m.insert(k, CellStub::new(k));
            black_box(m.remove(&k).map(|(_, c)| c.read()));
        });
        drop(map);

        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------

fn print_summary() {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    if totals.is_empty() {
        return;
    }
    let m = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{:.1}", r / 1e6));
    let x = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    };
    let share = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    println!();
    println!("== index summary (totals over every timed run of this process) ==");
    println!("M/s: million lookups per second of wall time, all threads together.");
    println!("CPU share: CPU time the bench threads got / (threads x wall time); below ~0.95 at");
    println!("2 threads another process held a core, and the wall-time 2t/1t understates scaling.");
    println!("per-CPU 2t/1t: lookups per CPU-second at 2t over 1t; 1.00 = no per-lookup cost from");
    println!("running beside another reader (only meaningful when the 2t CPU share is high).");
    for (size, _, _) in SIZES {
        println!();
        println!("hot reads, {size} keys");
        println!(
            "| read path | 1t M/s | 2t M/s | 2t/1t | 1t CPU share | 2t CPU share \
             | per-CPU 2t/1t | 1t vs dashmap | 2t vs dashmap |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let id = |path: &str, t: u32| format!("read/{size}/{path}/{t}t");
        let dash1 = rate(&totals, &id("dashmap/get", 1));
        let dash2 = rate(&totals, &id("dashmap/get", 2));
        for path in READ_PATHS {
            let (id1, id2) = (id(path, 1), id(path, 2));
            let (r1, r2) = (rate(&totals, &id1), rate(&totals, &id2));
            if r1.is_none() && r2.is_none() {
                continue;
            }
            println!(
                "| {path} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m(r1),
                m(r2),
                x(r2, r1),
                share(cpu_share(&totals, &id1, 1)),
                share(cpu_share(&totals, &id2, 2)),
                x(rate_per_cpu(&totals, &id2), rate_per_cpu(&totals, &id1)),
                x(r1, dash1),
                x(r2, dash2)
            );
        }
    }
    for (size, _, _) in SIZES {
        if !CHURN_MAPS
            .iter()
            .any(|name| totals.contains_key(&format!("churn/{size}/{name}")))
        {
            continue;
        }
        println!();
        println!("churn (insert absent key + remove it), {size} keys, 1 thread");
        println!("| map | ns per insert+remove | CPU share | time vs dashmap |");
        println!("|---|---:|---:|---:|");
        let dash = rate(&totals, &format!("churn/{size}/dashmap"));
        for name in CHURN_MAPS {
            let id = format!("churn/{size}/{name}");
            if let Some(r) = rate(&totals, &id) {
                println!(
                    "| {name} | {:.1} | {} | {} |",
                    1e9 / r,
                    share(cpu_share(&totals, &id, 1)),
                    // A time ratio: below 1x is faster than dashmap.
                    x(dash, Some(r))
                );
            }
        }
    }
}

fn main() {
    let long = std::env::var_os("CASKV_BENCH_LONG").is_some_and(|v| v != "0");
    let (warm_up, measure, samples) = if long { (3, 5, 100) } else { (1, 2, 20) };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(warm_up))
        .measurement_time(Duration::from_secs(measure))
        .sample_size(samples)
        .configure_from_args();
    reads(&mut c);
    churn(&mut c);
    c.final_summary();
    // `--test` runs each benchmark once and `--list` runs none: no figures worth a summary.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        print_summary();
    }
}
