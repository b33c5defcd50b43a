//! Instruction counts of single-thread operations, for `benches/callgrind.sh`: counted by
//! `valgrind --tool=callgrind`, they are the same from run to run whatever else the machine is
//! doing, so a regression of a few percent shows up where wall-clock timings cannot see it.
//!
//! `instructions --op OP --n N` fills a `Store<u64, u64>` with 10,000 keys, then runs `OP` `N`
//! times on keys from a fixed pseudo-random sequence. The script runs every op with `N = 0` and
//! `N = 200,000` and divides the difference by N: instructions per operation, setup excluded.
//! Ops: `get` (`Store::get`), `pinned_get` (`Pinned::get` under one pin), `set`, `set_cas`
//! (succeeding), `stale_cas` (failing on a stale index), `delete_set` (a delete and a re-create),
//! `batch4` and `batch16` (a 4- and a 16-key batch of `set_cas`), and the baseline `rwlock_get` (`RwLock<HashMap>` with the
//! same hasher). Without `--op` it prints what it is and exits, so `cargo bench` passes through.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::RwLock;

use caskv::{Op, Store};

const KEYS: u64 = 10_000;

fn key(i: u64) -> u64 {
    // A fixed permutation-like walk over the keys (no RNG state in the loop).
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS
}

/// `n` batches of `k` `set_cas`, each on the keys' current versions (read first).
fn batches(store: &Store<u64, u64>, n: u64, k: u64) {
    (0..n).for_each(|i| {
        let ops = (0..k)
            .map(|j| {
                let key = key(i * k + j);
                let current = store.get(&key).map_or(0, |e| e.modify_index);
                Op::set_cas(key, i, current)
            })
            .collect();
        black_box(store.batch(ops).ok());
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(op) = arg("--op") else {
        println!("instructions: single-thread ops for callgrind; see benches/callgrind.sh");
        return;
    };
    let n: u64 = arg("--n").and_then(|v| v.parse().ok()).unwrap_or(0);
    let store: Store<u64, u64> = Store::new();
    for k in 0..KEYS {
        store.set(k, k);
    }
    let rw: RwLock<HashMap<u64, (u64, u64), foldhash::fast::RandomState>> = RwLock::new(
        (0..KEYS)
            .map(|k| (k, (k, k)))
            .collect::<HashMap<_, _, foldhash::fast::RandomState>>(),
    );
    match op.as_str() {
        "get" => (0..n).for_each(|i| {
            black_box(store.get(&key(i)));
        }),
        "pinned_get" => {
            let pinned = store.pin();
            (0..n).for_each(|i| {
                black_box(pinned.get(&key(i)).map(|e| *e.value));
            });
        }
        "set" => (0..n).for_each(|i| {
            black_box(store.set(key(i), i));
        }),
        "set_cas" => (0..n).for_each(|i| {
            let k = key(i);
            let current = store.get(&k).map_or(0, |e| e.modify_index);
            black_box(store.set_cas(k, i, current).ok());
        }),
        "stale_cas" => (0..n).for_each(|i| {
            black_box(store.set_cas(key(i), i, 1).is_err());
        }),
        "delete_set" => (0..n).for_each(|i| {
            let k = key(i);
            black_box(store.delete(&k).ok());
            black_box(store.set(k, i));
        }),
        "batch4" => batches(&store, n, 4),
        "batch16" => batches(&store, n, 16),
        "rwlock_get" => (0..n).for_each(|i| {
            let map = rw.read().unwrap_or_else(|e| e.into_inner());
            black_box(map.get(&key(i)).map(|v| v.1));
        }),
        other => {
            eprintln!("instructions: unknown op {other}");
            std::process::exit(2);
        }
    }
}
