//! caskv as a bounded cache against the caches a user would pick instead: moka
//! (`sync::Cache`, TinyLFU admission with LRU eviction) and quick_cache (`sync::Cache`, an
//! S3-FIFO variant), each as its users call it (`get`, and `insert` on a miss).
//!
//! 1. **Hit ratio** on generated traces (no downloads), one thread, same trace for every cache:
//!    zipf 0.7, 0.9 and 0.99 over 1M keys at capacities of 0.1 %, 1 % and 10 %; a scan-polluted
//!    trace (zipf 0.9 with bursts of keys seen once); and a loop over 1.5x the capacity.
//!    Every request is a `get`; a miss inserts the key. moka applies its policy lazily
//!    (`run_pending_tasks` is left to its own schedule, as a user would).
//! 2. **Throughput** of a 90 % get / 10 % insert mix over zipf 0.9 keys with eviction active
//!    (capacity 1 % of 1M keys), at 1 and 2 threads (`CASKV_BENCH_THREADS=1,2,4,8,16` on a
//!    bigger machine), in M ops/s of all threads together.
//!
//! `cargo bench --bench cache` (about 3 minutes on 2 cores; `-- --quick` halves the traces and
//! phases; `CASKV_CACHE_PARTS=ratio` runs the hit ratios alone, `CASKV_CACHE_PARTS=throughput`
//! the throughput alone). Under `cargo test --benches` it runs a tiny smoke pass. Ratios compare figures of
//! the same run; nothing is asserted on timing.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use caskv::Store;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

type Hasher = foldhash::fast::RandomState;

/// A cache under test, called as its users call it.
trait Cache: Sync {
    const NAME: &'static str;
    fn new(capacity: u64) -> Self;
    fn get(&self, k: u64) -> bool;
    fn insert(&self, k: u64, v: [u8; 16]);
}

struct Caskv(Store<u64, [u8; 16]>);
impl Cache for Caskv {
    const NAME: &'static str = "caskv";
    fn new(capacity: u64) -> Self {
        Caskv(Store::builder().max_entries(capacity).build())
    }
    #[inline]
    fn get(&self, k: u64) -> bool {
        self.0.get(&k).is_some()
    }
    fn insert(&self, k: u64, v: [u8; 16]) {
        self.0.set(k, v);
    }
}

struct Moka(moka::sync::Cache<u64, [u8; 16], Hasher>);
impl Cache for Moka {
    const NAME: &'static str = "moka";
    fn new(capacity: u64) -> Self {
        Moka(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(Hasher::default()),
        )
    }
    #[inline]
    fn get(&self, k: u64) -> bool {
        self.0.get(&k).is_some()
    }
    fn insert(&self, k: u64, v: [u8; 16]) {
        self.0.insert(k, v);
    }
}

struct Quick(quick_cache::sync::Cache<u64, [u8; 16], quick_cache::UnitWeighter, Hasher>);
impl Cache for Quick {
    const NAME: &'static str = "quick_cache";
    fn new(capacity: u64) -> Self {
        Quick(quick_cache::sync::Cache::with(
            capacity as usize,
            capacity,
            quick_cache::UnitWeighter,
            Hasher::default(),
            Default::default(),
        ))
    }
    #[inline]
    fn get(&self, k: u64) -> bool {
        self.0.get(&k).is_some()
    }
    fn insert(&self, k: u64, v: [u8; 16]) {
        self.0.insert(k, v);
    }
}

const KEYS: u64 = 1 << 20;

/// A deterministic zipf(`s`) trace of `len` requests over `KEYS` keys, ranks scrambled.
fn zipf_trace(s: f64, len: usize, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(KEYS as f64, s).expect("zipf parameters");
    (0..len)
        .map(|_| scramble(zipf.sample(&mut rng) as u64))
        .collect()
}

/// A bijection on u64 that spreads ranks over the key space.
fn scramble(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// zipf 0.9 with, every `period` requests, a burst of `burst` keys never seen before or after.
fn scan_polluted_trace(len: usize, period: usize, burst: usize) -> Vec<u64> {
    let base = zipf_trace(0.9, len, 0x5CA9);
    let mut out = Vec::with_capacity(len + len / period * burst);
    let mut fresh = 1u64 << 62;
    for (i, k) in base.into_iter().enumerate() {
        if i % period == period - 1 {
            for _ in 0..burst {
                out.push(fresh);
                fresh += 1;
            }
        }
        out.push(k);
    }
    out
}

/// `rounds` passes over `n` keys in order.
fn loop_trace(n: u64, rounds: usize) -> Vec<u64> {
    (0..rounds).flat_map(|_| 0..n).map(scramble).collect()
}

/// Hits / requests of `C` at `capacity` over `trace`.
fn hit_ratio<C: Cache>(capacity: u64, trace: &[u64]) -> f64 {
    let cache = C::new(capacity);
    let mut hits = 0u64;
    for &k in trace {
        if cache.get(k) {
            hits += 1;
        } else {
            cache.insert(k, [k as u8; 16]);
        }
    }
    hits as f64 / trace.len() as f64
}

/// One row of the hit-ratio table: each cache's ratio, the best peer, caskv's margin.
fn ratio_row(name: &str, capacity: u64, trace: &[u64]) {
    let caskv = hit_ratio::<Caskv>(capacity, trace);
    let moka = hit_ratio::<Moka>(capacity, trace);
    let quick = hit_ratio::<Quick>(capacity, trace);
    let best = moka.max(quick);
    let margin = (caskv - best) * 100.0;
    let verdict = if margin >= -0.5 { "yes" } else { "no" };
    println!(
        "| {name} | {capacity} | {:.2} % | {:.2} % | {:.2} % | {margin:+.2} pp | {verdict} |",
        caskv * 100.0,
        moka * 100.0,
        quick * 100.0
    );
}

/// M ops/s of `threads` threads running 90 % get / 10 % insert over `keys` for `dur` each.
fn throughput<C: Cache>(capacity: u64, keys: &[u64], threads: usize, dur: Duration) -> f64 {
    let cache = C::new(capacity);
    // Warm: the cache full of the trace's keys.
    for &k in keys.iter().take(capacity as usize * 4) {
        cache.insert(k, [k as u8; 16]);
    }
    let barrier = Barrier::new(threads);
    let ops: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (cache, barrier) = (&cache, &barrier);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(t as u64 + 7);
                    let mut i = (t * keys.len() / threads.max(1)) % keys.len();
                    let mut n = 0u64;
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed() < dur {
                        for _ in 0..256 {
                            let k = keys[i];
                            i = if i + 1 == keys.len() { 0 } else { i + 1 };
                            if rng.random_range(0..10u32) == 0 {
                                cache.insert(k, [k as u8; 16]);
                            } else {
                                black_box(cache.get(k));
                            }
                        }
                        n += 256;
                    }
                    n
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .sum()
    });
    ops as f64 / dur.as_secs_f64() / 1e6
}

fn main() {
    let timed = std::env::args().any(|a| a == "--bench");
    let quick = std::env::args().any(|a| a == "--quick");
    let (len, dur) = match (timed, quick) {
        (false, _) => (20_000, Duration::from_millis(20)),
        (true, true) => (1_000_000, Duration::from_millis(500)),
        (true, false) => (2_000_000, Duration::from_secs(1)),
    };
    let threads: Vec<usize> = std::env::var("CASKV_BENCH_THREADS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2]);

    println!("## cache: caskv against moka and quick_cache\n");
    println!(
        "{} requests per trace over {KEYS} keys; {} cores\n",
        len,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let parts = std::env::var("CASKV_CACHE_PARTS").unwrap_or_default();
    if parts != "throughput" {
        hit_ratios(len);
    }
    if parts == "ratio" {
        return;
    }
    throughput_table(len, dur, &threads);
}

/// The hit-ratio table.
fn hit_ratios(len: usize) {
    println!("### Hit ratio (a miss inserts; one thread)\n");
    println!("| trace | capacity | caskv | moka | quick_cache | caskv − best | ≥ best (−0.5 pp) |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for s in [0.7, 0.9, 0.99] {
        let trace = zipf_trace(s, len, (s * 100.0) as u64);
        for capacity in [KEYS / 1000, KEYS / 100, KEYS / 10] {
            ratio_row(&format!("zipf {s}"), capacity, &trace);
        }
    }
    let capacity = KEYS / 100;
    let scan = scan_polluted_trace(len, 20_000, 2 * capacity as usize);
    ratio_row(
        "zipf 0.9 + one-time bursts of 2x capacity every 20K",
        capacity,
        &scan,
    );
    let looped = loop_trace(capacity * 3 / 2, (len / (capacity as usize * 3 / 2)).max(2));
    ratio_row("loop over 1.5x capacity", capacity, &looped);
}

/// The throughput table.
fn throughput_table(len: usize, dur: Duration, threads: &[usize]) {
    let capacity = KEYS / 100;
    println!("\n### Throughput: 90 % get / 10 % insert, zipf 0.9, capacity {capacity} (M ops/s)\n");
    let keys = zipf_trace(0.9, len, 0x7A11);
    print!("| cache |");
    for t in threads {
        print!(" {t}t |");
    }
    println!();
    print!("|---|");
    for _ in threads {
        print!("---:|");
    }
    println!();
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    for (name, run) in [
        (
            Caskv::NAME,
            throughput::<Caskv> as fn(u64, &[u64], usize, Duration) -> f64,
        ),
        (Moka::NAME, throughput::<Moka>),
        (Quick::NAME, throughput::<Quick>),
    ] {
        let figures: Vec<f64> = threads
            .iter()
            .map(|&t| run(capacity, &keys, t, dur))
            .collect();
        print!("| {name} |");
        for f in &figures {
            print!(" {f:.2} |");
        }
        println!();
        rows.push((name, figures));
    }
    print!("| caskv ÷ moka |");
    for i in 0..threads.len() {
        print!(" {:.2}x |", rows[0].1[i] / rows[1].1[i]);
    }
    println!();
    print!("| caskv ÷ quick_cache |");
    for i in 0..threads.len() {
        print!(" {:.2}x |", rows[0].1[i] / rows[2].1[i]);
    }
    println!();
}
