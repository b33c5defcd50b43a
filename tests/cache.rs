//! The cache side: a strict bound on entries (or weight) kept by eviction, evictions as deletes
//! at fresh indices, and a policy that keeps keys read often through a scan of one-time keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use caskv::{Journal, ManualClock, Mutation, Op, RemovalCause, Store};

#[test]
fn the_bound_holds_exactly_once_writes_are_done() {
    let cache: Store<u64, u64> = Store::builder().max_entries(1_000).build();
    for i in 0..10_000 {
        cache.set(i, i);
        assert!(cache.len() <= 1_000, "{} entries after {i}", cache.len());
    }
    assert_eq!(cache.len(), 1_000);
    assert_eq!(cache.weight(), Some(1_000));
    // Updates change nothing; deletes make room.
    let present = cache.keys();
    for &k in &present[..100] {
        cache.set(k, 0);
    }
    assert_eq!(cache.weight(), Some(1_000));
    for &k in &present[..100] {
        cache.delete(&k).unwrap();
    }
    assert_eq!((cache.len(), cache.weight()), (900, Some(900)));
    // Batches count their new keys, and evict for them too.
    let ops = (20_000..20_200).map(|k| Op::set(k, k)).collect();
    cache.batch(ops).unwrap();
    assert_eq!((cache.len(), cache.weight()), (1_000, Some(1_000)));
}

#[test]
fn a_zero_bound_keeps_nothing_and_a_tiny_one_keeps_the_last_keys() {
    let none: Store<u64, u64> = Store::builder().max_entries(0).build();
    none.set(1, 1);
    assert!(none.get(&1).is_none());
    let one: Store<u64, u64> = Store::builder().max_entries(1).build();
    one.set(1, 1);
    one.set(2, 2);
    assert_eq!(one.keys(), [2]);
}

/// Counts live keys from the journal: +1 for a created key, -1 for a delete. Each mutation is
/// recorded after it became visible, so the count never exceeds what the store holds.
struct Census {
    live: AtomicI64,
    peak: AtomicI64,
}

impl Journal<u64, u64> for Census {
    fn record(&self, m: Mutation<'_, u64, u64>) -> u64 {
        let delta = match m {
            Mutation::Set { entry, .. } if entry.create_index == entry.modify_index => 1,
            Mutation::Delete { .. } => -1,
            _ => 0,
        };
        let now = self.live.fetch_add(delta, Ordering::SeqCst) + delta;
        self.peak.fetch_max(now, Ordering::SeqCst);
        0
    }
}

#[test]
fn concurrent_writers_overshoot_by_at_most_one_entry_each() {
    const BOUND: u64 = 2_000;
    const THREADS: u64 = 4;
    let census = Arc::new(Census {
        live: AtomicI64::new(0),
        peak: AtomicI64::new(0),
    });
    let cache: Arc<Store<u64, u64>> = Arc::new(
        Store::builder()
            .max_entries(BOUND)
            .build_journaled(Box::new(census.clone())),
    );
    let rounds = if cfg!(miri) { 2 } else { 20 };
    let per_round = if cfg!(miri) { 50 } else { 2_000 };
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, barrier) = (&cache, &barrier);
            s.spawn(move || {
                for r in 0..rounds {
                    for i in 0..per_round {
                        let key = (r * per_round + i) * THREADS + t;
                        match i % 10 {
                            // Some updates of keys that may still be there, some deletes.
                            0 if key > 100 => drop(cache.set(key - 100, i)),
                            1 if key > 50 => drop(cache.delete(&(key - 50))),
                            _ => drop(cache.set(key, i)),
                        }
                    }
                    // Quiescent: every admission is done, so the bound holds exactly.
                    if barrier.wait().is_leader() {
                        let len = cache.len() as u64;
                        assert!(len <= BOUND, "{len} entries at rest");
                        assert_eq!(cache.weight(), Some(len));
                    }
                    barrier.wait();
                }
            });
        }
    });
    let peak = census.peak.load(Ordering::SeqCst) as u64;
    assert!(
        peak <= BOUND + THREADS,
        "{peak} entries seen live at once (bound {BOUND}, {THREADS} writers)"
    );
    assert_eq!(
        census.live.load(Ordering::SeqCst) as u64,
        cache.len() as u64
    );
}

/// Records every delete's index and every set's index, per key.
#[derive(Default)]
struct Indices(Mutex<Vec<(u64, &'static str, u64)>>);

impl Journal<u64, u64> for Indices {
    fn record(&self, m: Mutation<'_, u64, u64>) -> u64 {
        let mut log = self.0.lock().unwrap();
        match m {
            Mutation::Set { key, entry } => log.push((*key, "set", entry.modify_index)),
            Mutation::Delete { key, index } => log.push((*key, "delete", index)),
            Mutation::Batch { index, writes } => {
                for (k, e) in writes {
                    log.push((**k, if e.is_some() { "set" } else { "delete" }, index));
                }
            }
            _ => unreachable!("no other mutation kinds exist"),
        }
        0
    }
}

#[test]
fn an_eviction_is_a_delete_at_a_fresh_index() {
    let journal = Arc::new(Indices::default());
    let cache: Store<u64, u64> = Store::builder()
        .max_entries(10)
        .build_journaled(Box::new(journal.clone()));
    let mut written = Vec::new();
    for i in 0..50 {
        written.push(cache.set(i, i));
    }
    let log = journal.0.lock().unwrap();
    let deletes: Vec<_> = log.iter().filter(|e| e.1 == "delete").collect();
    assert_eq!(deletes.len(), 40, "one delete per evicted key");
    let mut indices: Vec<u64> = log.iter().map(|e| e.2).collect();
    let n = indices.len();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), n, "every mutation has its own index");
    for (key, _, index) in deletes {
        assert!(
            *index > written[*key as usize],
            "deleted after it was written"
        );
        assert!(cache.get(key).is_none());
    }
}

#[test]
fn keys_read_often_survive_a_scan_of_keys_written_once() {
    const BOUND: u64 = 1_000;
    let cache: Store<u64, u64> = Store::builder().max_entries(BOUND).build();
    let hot: Vec<u64> = (0..200).collect();
    for &k in &hot {
        cache.set(k, k);
    }
    for _ in 0..3 {
        for &k in &hot {
            assert!(cache.get(&k).is_some());
        }
    }
    // A scan ten times the bound, keys written once and never read, with the hot keys still
    // read between its parts.
    for (i, k) in (1_000_000..1_010_000u64).enumerate() {
        cache.set(k, k);
        if i % 50 == 0 {
            for &h in &hot {
                cache.get(&h);
            }
        }
    }
    let kept = hot.iter().filter(|k| cache.get(k).is_some()).count();
    assert!(kept >= 190, "only {kept} of 200 hot keys survived the scan");
    assert!(cache.len() as u64 <= BOUND);
}

#[test]
fn a_loop_larger_than_the_bound_keeps_hitting_a_stable_part_of_it() {
    // Every key is read once per pass, so no key is hotter than another: a policy that lets
    // each returning key push out an older one (LRU, CLOCK) misses nearly every read. The
    // frequency sketch keeps returning keys out of `main` unless they were seen more often
    // than what they would replace, so a stable part of the loop stays (at best 2/3 here).
    const BOUND: u64 = 4_096;
    let cache: Store<u64, u64> = Store::builder().max_entries(BOUND).build();
    let keys = BOUND * 3 / 2;
    let (mut hits, mut reads) = (0, 0);
    for pass in 0..30 {
        for k in 0..keys {
            let hit = cache.get(&k).is_some();
            if !hit {
                cache.set(k, k);
            }
            if pass >= 20 {
                reads += 1;
                hits += u64::from(hit);
            }
        }
    }
    let ratio = hits as f64 / reads as f64;
    // (0.65 with the sketch; 0.51 without it, when every returning key went to `main`.)
    assert!(
        ratio > 0.6,
        "hit ratio {ratio:.3} on a loop of 1.5 times the bound"
    );
}

#[test]
fn a_weight_bound_counts_what_the_weigher_says() {
    let cache: Store<String, Vec<u8>> = Store::builder()
        .max_weight(10_000, |k: &String, v: &Vec<u8>| (k.len() + v.len()) as u32)
        .build();
    let weigh = |c: &Store<String, Vec<u8>>| {
        c.entries()
            .iter()
            .map(|(k, e)| (k.len() + e.value.len()) as u64)
            .sum::<u64>()
    };
    for i in 0..1_000 {
        cache.set(format!("k{i:04}"), vec![0; (i % 7) * 50]);
        assert!(weigh(&cache) <= 10_000);
    }
    assert_eq!(cache.weight(), Some(weigh(&cache)));
    // Growing a value counts the difference (and may evict others).
    let k = cache.keys()[0].clone();
    cache.set(k.clone(), vec![0; 5_000]);
    assert!(weigh(&cache) <= 10_000);
    assert_eq!(cache.weight(), Some(weigh(&cache)));
    // An entry heavier than the whole bound does not stay.
    cache.set("huge".into(), vec![0; 20_000]);
    assert!(cache.get("huge").is_none());
    assert!(weigh(&cache) <= 10_000);
}

#[test]
fn expired_entries_leave_the_count_and_are_evicted_first() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cache: Store<u64, u64> = Store::builder()
        .max_entries(100)
        .clock(clock.clone())
        .build();
    for i in 0..100 {
        cache.set_with_ttl(i, i, Duration::from_secs(1));
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.purge_expired(), 100);
    assert_eq!(cache.weight(), Some(0));
    for i in 100..200 {
        cache.set_with_ttl(i, i, Duration::from_secs(1));
    }
    clock.advance(Duration::from_secs(1));
    // Over the bound with expired entries only: they make the room (each one a delete), the
    // fresh ones stay.
    for i in 200..250 {
        cache.set(i, i);
    }
    assert_eq!(
        cache.weight(),
        Some(100),
        "50 expired entries evicted, 50 still counted"
    );
    assert_eq!(cache.purge_expired(), 50);
    assert_eq!(cache.weight(), Some(50));
    assert_eq!(cache.keys(), (200..250).collect::<Vec<_>>());
}

#[test]
fn racing_readers_writers_and_deleters_keep_the_count_exact() {
    let cache: Arc<Store<u64, u64>> = Arc::new(Store::builder().max_entries(500).build());
    let n = if cfg!(miri) { 100 } else { 20_000 };
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let cache = &cache;
            s.spawn(move || {
                // Per key, what this thread read never goes back in index.
                let mut seen: HashMap<u64, u64> = HashMap::new();
                for i in 0..n {
                    let k = (i * 7 + t * 13) % 2_000;
                    match i % 6 {
                        0 => drop(cache.delete(&k)),
                        1 => drop(cache.batch(vec![Op::set(k, i), Op::set(k + 2_000, i)])),
                        2 | 3 => {
                            if let Some(e) = cache.get(&k) {
                                let before = seen.insert(k, e.modify_index).unwrap_or(0);
                                assert!(e.modify_index >= before, "key {k} went back");
                            }
                        }
                        _ => drop(cache.set(k, i)),
                    }
                }
            });
        }
    });
    assert!(cache.len() <= 500);
    assert_eq!(cache.weight(), Some(cache.len() as u64));
}

#[test]
fn entries_read_often_still_make_room_when_every_one_of_them_is_hot() {
    let cache: Store<u64, u64> = Store::builder().max_entries(100).build();
    for k in 0..100 {
        cache.set(k, k);
        cache.get(&k);
    }
    cache.set(100, 100);
    // Every entry at the highest frequency: one admission must still get back within the bound.
    for _ in 0..3 {
        for k in 0..=100 {
            cache.get(&k);
        }
    }
    cache.set(101, 101);
    assert_eq!((cache.len(), cache.weight()), (100, Some(100)));
}

/// A key whose `Hash` covers only part of it: distinct keys share full hashes, as the `Hash`
/// contract allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Partial(u64, u64);

impl std::hash::Hash for Partial {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

#[test]
fn keys_that_share_a_hash_are_evicted_like_any_other() {
    let cache: Store<Partial, u64> = Store::builder().max_entries(2).build();
    cache.set(Partial(0, 1), 1);
    cache.delete(&Partial(0, 1)).unwrap();
    for b in 2..10 {
        cache.set(Partial(0, b), b);
        assert!(cache.len() <= 2, "{} entries", cache.len());
    }
    assert_eq!(cache.weight(), Some(2));
}

#[test]
fn keys_that_come_and_go_below_the_bound_leave_no_backlog_behind() {
    let cache: Store<u64, u64> = Store::builder().max_entries(1_000).build();
    let n = if cfg!(miri) { 1_000 } else { 200_000 };
    for k in 0..n {
        cache.set(k, k);
        cache.delete(&k).unwrap();
    }
    // Then a full cache behaves as usual: the bound and the count hold.
    for k in 0..2_000u64 {
        cache.set(n + k, k);
    }
    assert_eq!((cache.len(), cache.weight()), (1_000, Some(1_000)));
}

#[test]
fn concurrent_callers_for_one_missing_key_run_one_loader() {
    let cache: Store<u64, String> = Store::builder().max_entries(100).build();
    let loads = std::sync::atomic::AtomicU64::new(0);
    let barrier = Barrier::new(8);
    let entries: Vec<caskv::Entry<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (cache, loads, barrier) = (&cache, &loads, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    cache.get_or_insert_with(7, || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        format!("loaded by {t}")
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one loader ran");
    assert!(entries.windows(2).all(|w| w[0] == w[1]), "{entries:?}");
    assert_eq!(cache.get(&7).unwrap(), entries[0]);
}

#[test]
fn a_failed_or_panicking_loader_lets_a_waiting_caller_load_instead() {
    let cache: Store<u64, u64> = Store::new();
    // A loader error reaches its own caller only, and nothing is written.
    let err = cache.try_get_or_insert_with(1, || Err::<u64, &str>("backend down"));
    assert_eq!(err.unwrap_err(), "backend down");
    assert!(cache.get(&1).is_none());
    // A panicking leader: its followers start over, and one of them loads.
    let barrier = Barrier::new(2);
    let got = std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_insert_with(2, || {
                barrier.wait(); // the follower is about to wait on this flight
                std::thread::sleep(Duration::from_millis(50));
                panic!("loader failed");
            })
        });
        let follower = s.spawn(|| {
            barrier.wait();
            cache.get_or_insert_with(2, || 22)
        });
        assert!(
            leader.join().is_err(),
            "the leader's panic unwinds out of its own call"
        );
        follower.join().unwrap()
    });
    assert_eq!(got.value, 22);
    assert_eq!(cache.get(&2).unwrap().value, 22);
    // A key written by a plain writer while absent for the loader: the loader's caller gets
    // the entry that is there.
    cache.set(3, 30);
    assert_eq!(cache.get_or_insert_with(3, || 31).value, 30);
}

/// What a listener was told, in order.
type Told<V> = Arc<Mutex<Vec<(u64, caskv::Entry<V>, RemovalCause)>>>;

fn recording<V: Send + 'static>() -> (Told<V>, impl Fn(u64, caskv::Entry<V>, RemovalCause)) {
    let told: Told<V> = Arc::default();
    let sink = told.clone();
    (told, move |k, e, c| sink.lock().unwrap().push((k, e, c)))
}

#[test]
fn the_listener_is_told_of_every_eviction_with_the_version_that_went() {
    let (told, listener) = recording::<String>();
    let cache: Store<u64, String> = Store::builder()
        .max_entries(100)
        .eviction_listener(listener)
        .build();
    let mut written = HashMap::new();
    for k in 0..1_000u64 {
        let index = cache.set(k, k.to_string());
        written.insert(k, index);
    }
    let told = told.lock().unwrap();
    assert_eq!(told.len(), 900);
    assert_eq!(cache.cache_stats().unwrap().evictions, 900);
    let present: std::collections::HashSet<u64> = cache.keys().into_iter().collect();
    for (k, entry, cause) in told.iter() {
        assert_eq!(*cause, RemovalCause::Capacity);
        assert_eq!(entry.value, k.to_string());
        assert_eq!(
            entry.modify_index, written[k],
            "the version that was deleted"
        );
        assert!(!present.contains(k), "{k} reported evicted but present");
    }
    let reported: std::collections::HashSet<u64> = told.iter().map(|t| t.0).collect();
    assert_eq!(reported.len(), 900, "each eviction reported once");
}

#[test]
fn the_listener_is_told_of_expiries_by_writes_purges_batches_and_the_policy() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (told, listener) = recording::<u64>();
    let store: Store<u64, u64> = Store::builder()
        .clock(clock.clone())
        .eviction_listener(listener)
        .build();
    for k in 0..4 {
        store.set_with_ttl(k, k, Duration::from_secs(1));
    }
    clock.advance(Duration::from_secs(1));
    // A read sees nothing and reports nothing: the delete is not made yet.
    assert!(store.get(&0).is_none());
    assert!(told.lock().unwrap().is_empty());
    store.set(0, 10); // a single-key write meets it
    store.batch(vec![Op::set(1, 11)]).unwrap(); // a batch's lock step meets it
    assert_eq!(store.purge_expired(), 2); // the purge takes the rest
    let mut seen: Vec<(u64, u64, RemovalCause)> = told
        .lock()
        .unwrap()
        .iter()
        .map(|(k, e, c)| (*k, e.value, *c))
        .collect();
    seen.sort_unstable_by_key(|t| t.0);
    let expired = RemovalCause::Expired;
    assert_eq!(
        seen,
        [
            (0, 0, expired),
            (1, 1, expired),
            (2, 2, expired),
            (3, 3, expired)
        ]
    );

    // The policy of a bounded store deletes an expired entry before a live one.
    let (told, listener) = recording::<u64>();
    let cache: Store<u64, u64> = Store::builder()
        .max_entries(4)
        .clock(clock.clone())
        .eviction_listener(listener)
        .build();
    cache.set_with_ttl(1, 1, Duration::from_millis(5));
    for k in 2..5 {
        cache.set(k, k);
    }
    clock.advance(Duration::from_millis(5));
    cache.set(9, 9);
    let told = told.lock().unwrap();
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].0, told[0].2), (1, RemovalCause::Expired));
}

#[test]
fn a_listener_may_use_the_store_it_listens_to() {
    // The listener writes each evicted key into the same store's "graveyard" range (which is
    // itself bounded, so it evicts and calls the listener again, on the same thread): it must
    // run with no lock held, or this would wait on itself.
    let cell: Arc<std::sync::OnceLock<std::sync::Weak<Store<u64, u64>>>> = Arc::default();
    let reach = cell.clone();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = calls.clone();
    let cache = Arc::new(
        Store::builder()
            .max_entries(64)
            .eviction_listener(move |k: u64, e: caskv::Entry<u64>, _| {
                counted.fetch_add(1, Ordering::Relaxed);
                if let Some(store) = reach.get().and_then(std::sync::Weak::upgrade) {
                    assert!(store.get(&k).is_none(), "reported before it was gone");
                    if k < 1 << 32 {
                        store.set(k | 1 << 32, e.value);
                    }
                }
            })
            .build(),
    );
    cell.set(Arc::downgrade(&cache)).unwrap();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let cache = &cache;
            s.spawn(move || {
                for i in 0..2_000 {
                    let k = t * 10_000 + i;
                    if i % 7 == 0 {
                        cache
                            .batch(vec![Op::set(k, k), Op::set(k + 5_000, k)])
                            .unwrap();
                    } else {
                        cache.set(k, k);
                    }
                }
            });
        }
    });
    assert!(cache.len() <= 64);
    let evictions = cache.cache_stats().unwrap().evictions;
    assert!(evictions > 4_000, "{evictions} evictions");
    assert_eq!(calls.load(Ordering::Relaxed), evictions);
}

#[test]
fn concurrent_evictions_are_each_reported_exactly_once() {
    let (told, listener) = recording::<u64>();
    let cache: Store<u64, u64> = Store::builder()
        .max_entries(500)
        .eviction_listener(listener)
        .build();
    let threads = 4u64;
    let per = 5_000u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let cache = &cache;
            s.spawn(move || {
                for i in 0..per {
                    let k = t * per + i; // every key written once
                    cache.set(k, k);
                    if i % 3 == 0 {
                        cache.get(&(k / 2));
                    }
                }
            });
        }
    });
    let told = told.lock().unwrap();
    let mut reported: Vec<u64> = told.iter().map(|t| t.0).collect();
    reported.sort_unstable();
    let before = reported.len();
    reported.dedup();
    assert_eq!(reported.len(), before, "a key reported twice");
    let mut all: Vec<u64> = cache.keys();
    all.extend(&reported);
    all.sort_unstable();
    let expected: Vec<u64> = (0..threads * per).collect();
    assert_eq!(
        all, expected,
        "every key is present or reported, never both"
    );
    assert_eq!(told.len() as u64, cache.cache_stats().unwrap().evictions);
}

#[test]
fn a_panicking_listener_leaves_the_removal_made_and_resumes_in_the_caller() {
    let cache: Store<u64, u64> = Store::builder()
        .max_entries(1)
        .eviction_listener(|k, _, _| {
            if k == 1 {
                panic!("listener failed on {k}")
            }
        })
        .build();
    cache.set(1, 1);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.set(2, 2)));
    assert!(caught.is_err(), "the listener's panic reaches the caller");
    assert_eq!(cache.keys(), [2]);
    assert_eq!(cache.weight(), Some(1));
    cache.set(3, 3); // still works; 2 is evicted quietly
    assert_eq!(cache.keys(), [3]);
}
