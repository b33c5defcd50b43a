//! Single-thread cost of caskv's operations against two baselines on the same keys and the same
//! random key order:
//!
//! - `rwlock`: `std::sync::RwLock<HashMap<u64, (value, modify_index)>>` with foldhash and an
//!   `AtomicU64` global index; a CAS is the write lock plus an index compare.
//! - `plain`: the same `HashMap` with no lock at all (`&mut` for writes), the floor.
//!
//! Operations: `get` (`Store::get`, which clones the value's `Arc`), `pinned.get` (one
//! `Store::pin` per timed run, reused for every lookup of the run), `pin` alone, `set`,
//! `set_cas` that succeeds, `set_cas` with a stale index (fails with a conflict), and a batch of
//! four `set_cas` on distinct keys. 10 000 keys are pre-filled; keys come from a precomputed
//! random order.
//!
//! Run with `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench single_thread`. Quick by
//! default (1 s warm-up, 2 s measurement, 20 samples); `CASKV_BENCH_LONG=1` for 3 s / 5 s / 100.
//! At the end it prints a summary table with ratios computed from every timed run of this
//! process, so they compare figures measured in the same run.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use caskv::{Op, Store};
use criterion::{Criterion, Throughput};

type Hasher = foldhash::fast::RandomState;

const KEYS: u64 = 10_000;
/// Length of the random key order (a power of two).
const ORDER: usize = 1 << 16;
/// Keys of one batch: `k, k + STRIDE, k + 2 * STRIDE, k + 3 * STRIDE`, all distinct.
const STRIDE: u64 = KEYS / 4;

/// splitmix64: a deterministic random key order.
fn key_order() -> Vec<u64> {
    let mut s = 0x5EED_u64;
    (0..ORDER)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % KEYS
        })
        .collect()
}

fn batch_keys(k: u64) -> [u64; 4] {
    let base = k % STRIDE;
    [base, base + STRIDE, base + 2 * STRIDE, base + 3 * STRIDE]
}

// ---------------------------------------------------------------------------------------------
// Baselines.

/// `(value, modify_index)`.
type Slot = (u64, u64);

/// The lock-based baseline: one `RwLock` over the map and a global index counter.
struct Locked {
    map: RwLock<HashMap<u64, Slot, Hasher>>,
    clock: AtomicU64,
}

impl Locked {
    fn filled() -> Self {
        let s = Locked {
            map: RwLock::new(HashMap::with_hasher(Hasher::default())),
            clock: AtomicU64::new(0),
        };
        for k in 0..KEYS {
            s.set(k, k);
        }
        s
    }

    fn next_index(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn get(&self, k: u64) -> Option<Slot> {
        self.map.read().unwrap().get(&k).copied()
    }

    fn set(&self, k: u64, v: u64) -> u64 {
        let mut map = self.map.write().unwrap();
        let index = self.next_index();
        map.insert(k, (v, index));
        index
    }

    /// `expected == 0`: create only; otherwise the `modify_index` must match. Hands back the
    /// current slot on a conflict.
    fn set_cas(&self, k: u64, v: u64, expected: u64) -> Result<u64, Option<Slot>> {
        let mut map = self.map.write().unwrap();
        match map.get_mut(&k) {
            Some(slot) if slot.1 == expected => {
                let index = self.next_index();
                *slot = (v, index);
                Ok(index)
            }
            Some(slot) => Err(Some(*slot)),
            None if expected == 0 => {
                let index = self.next_index();
                map.insert(k, (v, index));
                Ok(index)
            }
            None => Err(None),
        }
    }

    /// All four `set_cas` at one index, or none.
    fn batch(&self, ops: &[(u64, u64, u64); 4]) -> Result<u64, usize> {
        let mut map = self.map.write().unwrap();
        let failed = ops
            .iter()
            .filter(|(k, _, expected)| map.get(k).map_or(0, |s| s.1) != *expected)
            .count();
        if failed > 0 {
            return Err(failed);
        }
        let index = self.next_index();
        for &(k, v, _) in ops {
            map.insert(k, (v, index));
        }
        Ok(index)
    }
}

/// The floor: the same map, no lock, `&mut` for writes.
struct Plain {
    map: HashMap<u64, Slot, Hasher>,
    clock: u64,
}

impl Plain {
    fn filled() -> Self {
        let mut s = Plain {
            map: HashMap::with_hasher(Hasher::default()),
            clock: 0,
        };
        for k in 0..KEYS {
            s.set(k, k);
        }
        s
    }

    fn get(&self, k: u64) -> Option<Slot> {
        self.map.get(&k).copied()
    }

    fn set(&mut self, k: u64, v: u64) -> u64 {
        self.clock += 1;
        self.map.insert(k, (v, self.clock));
        self.clock
    }

    fn set_cas(&mut self, k: u64, v: u64, expected: u64) -> Result<u64, Option<Slot>> {
        match self.map.get_mut(&k) {
            Some(slot) if slot.1 == expected => {
                self.clock += 1;
                *slot = (v, self.clock);
                Ok(self.clock)
            }
            Some(slot) => Err(Some(*slot)),
            None if expected == 0 => Ok(self.set(k, v)),
            None => Err(None),
        }
    }

    fn batch(&mut self, ops: &[(u64, u64, u64); 4]) -> Result<u64, usize> {
        let failed = ops
            .iter()
            .filter(|(k, _, expected)| self.map.get(k).map_or(0, |s| s.1) != *expected)
            .count();
        if failed > 0 {
            return Err(failed);
        }
        self.clock += 1;
        for &(k, v, _) in ops {
            self.map.insert(k, (v, self.clock));
        }
        Ok(self.clock)
    }
}

fn store_filled() -> Store<u64, u64> {
    let store = Store::new();
    for k in 0..KEYS {
        store.set(k, k);
    }
    store
}

/// Every key's current `modify_index`, read outside the timed region.
fn indices_of(read: impl Fn(u64) -> u64) -> Vec<u64> {
    (0..KEYS).map(read).collect()
}

// ---------------------------------------------------------------------------------------------
// Figures kept for the summary: total operations, wall time and CPU time of every timed run.

/// Per benchmark: operations, wall time, CPU time the thread got.
static TOTALS: Mutex<BTreeMap<String, (u64, Duration, Duration)>> = Mutex::new(BTreeMap::new());

/// CPU time this thread has run, from the kernel's scheduler statistics (Linux); zero where
/// unavailable.
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Times `iters` calls of `op(i)` and records them under `id`.
#[inline(always)]
fn timed(id: &str, iters: u64, mut op: impl FnMut(usize)) -> Duration {
    let cpu = thread_cpu_time();
    let start = Instant::now();
    for i in 0..iters as usize {
        op(i);
    }
    let elapsed = start.elapsed();
    let cpu = thread_cpu_time().saturating_sub(cpu);
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = totals.entry(id.to_string()).or_default();
    slot.0 += iters;
    slot.1 += elapsed;
    slot.2 += cpu;
    elapsed
}

fn ns_per_op(id: &str) -> Option<f64> {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    totals
        .get(id)
        .filter(|(ops, _, _)| *ops > 0)
        .map(|(ops, t, _)| t.as_nanos() as f64 / *ops as f64)
}

// ---------------------------------------------------------------------------------------------

const MASK: usize = ORDER - 1;

fn benches(c: &mut Criterion) {
    let order = key_order();
    let key = |i: usize| order[i & MASK];

    let store = store_filled();
    let locked = Locked::filled();
    let mut plain = Plain::filled();

    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    g.bench_function("caskv/store.get", |b| {
        b.iter_custom(|n| {
            timed("get/caskv/store.get", n, |i| {
                black_box(store.get(&key(i)).map(|e| e.value ^ e.modify_index));
            })
        })
    });
    g.bench_function("caskv/pinned.get", |b| {
        b.iter_custom(|n| {
            let pinned = store.pin();
            timed("get/caskv/pinned.get", n, |i| {
                black_box(pinned.get(&key(i)).map(|e| *e.value ^ e.modify_index));
            })
        })
    });
    g.bench_function("rwlock", |b| {
        b.iter_custom(|n| {
            timed("get/rwlock", n, |i| {
                black_box(locked.get(key(i)).map(|(v, m)| v ^ m));
            })
        })
    });
    g.bench_function("plain", |b| {
        b.iter_custom(|n| {
            timed("get/plain", n, |i| {
                black_box(plain.get(key(i)).map(|(v, m)| v ^ m));
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pin");
    g.throughput(Throughput::Elements(1));
    g.bench_function("caskv/store.pin", |b| {
        b.iter_custom(|n| timed("pin/caskv/store.pin", n, |_| drop(black_box(store.pin()))))
    });
    g.finish();

    let mut g = c.benchmark_group("set");
    g.throughput(Throughput::Elements(1));
    g.bench_function("caskv", |b| {
        b.iter_custom(|n| {
            timed("set/caskv", n, |i| {
                black_box(store.set(key(i), i as u64));
            })
        })
    });
    g.bench_function("rwlock", |b| {
        b.iter_custom(|n| {
            timed("set/rwlock", n, |i| {
                black_box(locked.set(key(i), i as u64));
            })
        })
    });
    g.bench_function("plain", |b| {
        b.iter_custom(|n| {
            timed("set/plain", n, |i| {
                black_box(plain.set(key(i), i as u64));
            })
        })
    });
    g.finish();

    // Each timed run first reads every key's current index (untimed), then each CAS passes the
    // index its key has now and keeps the new one.
    let mut g = c.benchmark_group("set_cas_ok");
    g.throughput(Throughput::Elements(1));
    g.bench_function("caskv", |b| {
        b.iter_custom(|n| {
            let mut idx = indices_of(|k| store.get(&k).map_or(0, |e| e.modify_index));
            timed("set_cas_ok/caskv", n, |i| {
                let k = key(i);
                let at = store.set_cas(k, i as u64, idx[k as usize]);
                idx[k as usize] = at.expect("set_cas with the current index");
            })
        })
    });
    g.bench_function("rwlock", |b| {
        b.iter_custom(|n| {
            let mut idx = indices_of(|k| locked.get(k).map_or(0, |s| s.1));
            timed("set_cas_ok/rwlock", n, |i| {
                let k = key(i);
                let at = locked.set_cas(k, i as u64, idx[k as usize]);
                idx[k as usize] = at.expect("set_cas with the current index");
            })
        })
    });
    g.bench_function("plain", |b| {
        b.iter_custom(|n| {
            let mut idx = indices_of(|k| plain.get(k).map_or(0, |s| s.1));
            timed("set_cas_ok/plain", n, |i| {
                let k = key(i);
                let at = plain.set_cas(k, i as u64, idx[k as usize]);
                idx[k as usize] = at.expect("set_cas with the current index");
            })
        })
    });
    g.finish();

    // Stale: one below the current index (0 for a key at index 1: create-only, also a conflict).
    let mut g = c.benchmark_group("set_cas_stale");
    g.throughput(Throughput::Elements(1));
    g.bench_function("caskv", |b| {
        b.iter_custom(|n| {
            let idx = indices_of(|k| store.get(&k).map_or(0, |e| e.modify_index - 1));
            timed("set_cas_stale/caskv", n, |i| {
                let k = key(i);
                let err = store.set_cas(k, i as u64, idx[k as usize]);
                black_box(err.expect_err("stale set_cas"));
            })
        })
    });
    g.bench_function("rwlock", |b| {
        b.iter_custom(|n| {
            let idx = indices_of(|k| locked.get(k).map_or(0, |s| s.1 - 1));
            timed("set_cas_stale/rwlock", n, |i| {
                let k = key(i);
                let err = locked.set_cas(k, i as u64, idx[k as usize]);
                black_box(err.expect_err("stale set_cas"));
            })
        })
    });
    g.bench_function("plain", |b| {
        b.iter_custom(|n| {
            let idx = indices_of(|k| plain.get(k).map_or(0, |s| s.1 - 1));
            timed("set_cas_stale/plain", n, |i| {
                let k = key(i);
                let err = plain.set_cas(k, i as u64, idx[k as usize]);
                black_box(err.expect_err("stale set_cas"));
            })
        })
    });
    g.finish();

    // A batch of four set_cas on distinct keys, all succeeding; figures are per batch.
    let mut g = c.benchmark_group("batch4_set_cas");
    g.throughput(Throughput::Elements(1));
    g.bench_function("caskv", |b| {
        b.iter_custom(|n| {
            let mut idx = indices_of(|k| store.get(&k).map_or(0, |e| e.modify_index));
            timed("batch4_set_cas/caskv", n, |i| {
                let ks = batch_keys(key(i));
                let ops = ks
                    .iter()
                    .map(|&k| Op::set_cas(k, i as u64, idx[k as usize]))
                    .collect();
                let at = store.batch(ops).expect("batch with the current indices");
                for k in ks {
                    idx[k as usize] = at;
                }
            })
        })
    });
    g.bench_function("rwlock", |b| {
        b.iter_custom(|n| {
            let mut idx = indices_of(|k| locked.get(k).map_or(0, |s| s.1));
            timed("batch4_set_cas/rwlock", n, |i| {
                let ks = batch_keys(key(i));
                let ops = ks.map(|k| (k, i as u64, idx[k as usize]));
                let at = locked.batch(&ops).expect("batch with the current indices");
                for k in ks {
                    idx[k as usize] = at;
                }
            })
        })
    });
    g.bench_function("plain", |b| {
        b.iter_custom(|n| {
            let mut idx = indices_of(|k| plain.get(k).map_or(0, |s| s.1));
            timed("batch4_set_cas/plain", n, |i| {
                let ks = batch_keys(key(i));
                let ops = ks.map(|k| (k, i as u64, idx[k as usize]));
                let at = plain.batch(&ops).expect("batch with the current indices");
                for k in ks {
                    idx[k as usize] = at;
                }
            })
        })
    });
    g.finish();
}

/// Rows of the summary: label, caskv id, operation group for the baselines.
const ROWS: [(&str, &str, &str); 7] = [
    ("get (store.get)", "get/caskv/store.get", "get"),
    (
        "get (pinned.get, pin reused)",
        "get/caskv/pinned.get",
        "get",
    ),
    ("store.pin() alone", "pin/caskv/store.pin", "pin"),
    ("set", "set/caskv", "set"),
    ("set_cas, succeeds", "set_cas_ok/caskv", "set_cas_ok"),
    (
        "set_cas, stale index (fails)",
        "set_cas_stale/caskv",
        "set_cas_stale",
    ),
    (
        "batch of 4 set_cas (per batch)",
        "batch4_set_cas/caskv",
        "batch4_set_cas",
    ),
];

fn print_summary() {
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    };
    println!();
    println!("== single-thread summary, ns/op (totals over every timed run of this process) ==");
    println!(
        "| operation | caskv | RwLock<HashMap> | plain HashMap | caskv / RwLock | caskv / plain |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, id, op) in ROWS {
        let caskv = ns_per_op(id);
        if caskv.is_none() {
            continue;
        }
        let rw = ns_per_op(&format!("{op}/rwlock"));
        let plain = ns_per_op(&format!("{op}/plain"));
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            cell(caskv),
            cell(rw),
            cell(plain),
            ratio(caskv, rw),
            ratio(caskv, plain)
        );
    }
    // How much of the wall time the bench thread was actually on a CPU: well below 1.0 means
    // another process took the core and the affected figures are inflated.
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let shares = totals
        .iter()
        .filter(|(_, (_, wall, cpu))| !cpu.is_zero() && !wall.is_zero())
        .map(|(id, (_, wall, cpu))| (cpu.as_secs_f64() / wall.as_secs_f64(), id));
    if let Some((share, id)) = shares.min_by(|a, b| a.0.total_cmp(&b.0)) {
        println!();
        println!("lowest CPU share (CPU time / wall time) of any benchmark: {share:.2} ({id})");
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
    benches(&mut c);
    c.final_summary();
    // `--test` runs each benchmark once and `--list` runs none: no figures worth a summary.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        print_summary();
    }
}
