//! Concurrency stress tests through the public API.
//!
//! Each test runs a bounded number of iterations (never a time budget) and then checks an
//! invariant that a lost write, a torn batch, a reused index or a deadlock would break:
//! - CAS increments: every key's final value equals the number of successful increments, and
//!   ordering the increments by the index they returned gives the values 1, 2, 3, … in turn.
//! - Batch atomicity: readers making separate reads of a batch's key set never see an older
//!   batch after a newer one, never see two batches at one index, and, when the set did not
//!   change during a pass, see one batch on every key.
//! - Overlapping batches in opposite key order finish (a watchdog fails the test otherwise).
//! - Delete racing re-create: successes alternate create, delete, create, … in index order.
//! - Batches against single-key CAS on overlapping keys: counts and index order agree.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier};
use std::time::Duration;

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::within;

use caskv::{Error, Op, Store};

/// Yields the thread one time in `one_in`. Tests call it inside their read-modify-write
/// windows: the machines that run them may have as few as two cores, and without it a thread
/// often finishes its whole loop within one time slice, meeting no other thread at all.
fn maybe_yield(rng: &mut fastrand::Rng, one_in: u32) {
    if rng.u32(0..one_in) == 0 {
        std::thread::yield_now();
    }
}

/// A thread's successful increments: (key, index returned, value written if known).
type IncrementLog = Vec<(u64, u64, Option<u64>)>;

/// Checks one key's log of successful increments: each entry is (index returned, value
/// written, or `None` where the writer could not know it). In index order the values must be
/// 1, 2, 3, …, indices must be distinct, and the key must end at the count and at the last
/// index.
fn check_increments(store: &Store<u64, u64>, key: u64, log: &mut [(u64, Option<u64>)]) {
    log.sort_unstable();
    for (rank, w) in log.windows(2).enumerate() {
        assert!(
            w[0].0 < w[1].0,
            "key {key}: index {} returned to two increments (at rank {rank})",
            w[0].0
        );
    }
    for (rank, &(index, value)) in log.iter().enumerate() {
        if let Some(value) = value {
            assert_eq!(
                value,
                rank as u64 + 1,
                "key {key}: the increment at index {index} wrote {value}, but it is increment \
                 number {} in index order",
                rank + 1
            );
        }
    }
    let count = log.len() as u64;
    match store.get(&key) {
        None => assert_eq!(
            count, 0,
            "key {key}: {count} increments but the key is absent"
        ),
        Some(e) => {
            assert_eq!(e.value, count, "key {key}: value vs successful increments");
            assert_eq!(Some(e.modify_index), log.last().map(|l| l.0));
            assert_eq!(Some(e.create_index), log.first().map(|l| l.0));
        }
    }
}

/// One increment by read-then-CAS, retried until it lands: (index, value written) and the
/// number of conflicts it met.
fn cas_increment(
    store: &Store<u64, u64>,
    key: u64,
    rng: &mut fastrand::Rng,
) -> ((u64, Option<u64>), u64) {
    let mut conflicts = 0;
    loop {
        let (value, expected) = store
            .get(&key)
            .map_or((0, 0), |e| (e.value, e.modify_index));
        maybe_yield(rng, 3);
        match store.set_cas(key, value + 1, expected) {
            Ok(index) => return ((index, Some(value + 1)), conflicts),
            // Absent → created by someone else (conflict), or deleted: neither happens here,
            // but a NotFound would be a legal retry too.
            Err(e) if e.is_conflict() || e.is_not_found() => conflicts += 1,
            Err(e) => panic!("unexpected error from set_cas: {e:?}"),
        }
    }
}

#[test]
fn cas_increments_count_every_success() {
    const THREADS: usize = 8;
    const KEYS: u64 = 3;
    const CAS_PER_THREAD: usize = 3000;
    const UPDATES_PER_THREAD: usize = 600;
    let store: Store<u64, u64> = Store::builder()
        .update_attempts(1000)
        .update_backoff(Duration::from_micros(1), Duration::from_micros(100))
        .build();
    let start = Barrier::new(THREADS);
    let logs: Vec<(IncrementLog, u64, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, start) = (&store, &start);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    let mut log = Vec::new();
                    let (mut conflicts, mut gave_up) = (0, 0);
                    start.wait();
                    for i in 0..CAS_PER_THREAD + UPDATES_PER_THREAD {
                        let key = rng.u64(0..KEYS);
                        // Interleave the two ways of incrementing.
                        if i % 6 == 5 {
                            match store.update(key, |v| v.copied().unwrap_or(0) + 1) {
                                Ok(index) => log.push((key, index, None)),
                                Err(Error::RetriesExhausted { .. }) => gave_up += 1,
                                Err(e) => panic!("unexpected error from update: {e:?}"),
                            }
                        } else {
                            let ((index, value), c) = cas_increment(store, key, &mut rng);
                            conflicts += c;
                            log.push((key, index, value));
                        }
                    }
                    (log, conflicts, gave_up)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut per_key: BTreeMap<u64, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    let (mut updates, mut conflicts, mut gave_up) = (0, 0, 0);
    for (log, c, g) in logs {
        conflicts += c;
        gave_up += g;
        for (key, index, value) in log {
            updates += usize::from(value.is_none());
            per_key.entry(key).or_default().push((index, value));
        }
    }
    let total: usize = per_key.values().map(Vec::len).sum();
    assert_eq!(
        total + gave_up,
        THREADS * (CAS_PER_THREAD + UPDATES_PER_THREAD)
    );
    assert!(updates > 0, "no update succeeded ({gave_up} gave up)");
    for key in 0..KEYS {
        check_increments(&store, key, per_key.entry(key).or_default());
    }
    eprintln!(
        "cas increments: {total} landed ({updates} through update, {gave_up} updates gave up) \
         after {conflicts} conflicts"
    );
}

/// The keys of the batch-atomicity set.
const SET: [u32; 6] = [10, 11, 12, 13, 14, 15];

/// A writer's id and sequence number in one value.
fn tag(writer: u64, seq: u64) -> u64 {
    (writer << 32) | seq
}

/// What a reader saw in one pass: (key, modify_index, value) in read order.
type Pass = Vec<(u32, u64, u64)>;

/// Checks one pass over the set, read in the pass's order and then its first key once more.
fn check_pass(pass: &Pass) {
    for w in pass.windows(2) {
        let ((k0, i0, v0), (k1, i1, v1)) = (w[0], w[1]);
        // Every batch writes every key, and batches over one key set commit in index order, so a
        // later read can only see the same batch or a newer one.
        assert!(
            i1 >= i0,
            "key {k1} read at index {i1} after key {k0} read at index {i0}: an older batch \
             after a newer one (pass {pass:?})"
        );
        if i0 == i1 {
            assert_eq!(v0, v1, "two values at index {i0} (pass {pass:?})");
        }
    }
    // With the first key read again at the end, this also covers a pass during which no batch
    // committed: first and last at one index force every read in between to that index, so
    // such a pass sees one batch on every key.
}

#[test]
fn readers_never_see_part_of_a_batch() {
    const WRITERS: u64 = 3;
    const BATCHES_PER_WRITER: u64 = 4000;
    const READERS: usize = 3;
    const PASSES_PER_READER: usize = 15_000;
    let store: Store<u32, u64> = Store::new();
    let first = store
        .batch(SET.iter().map(|&k| Op::set(k, tag(0, 0))).collect())
        .unwrap();
    let start = Barrier::new(WRITERS as usize + READERS);
    let (committed, passes) = std::thread::scope(|s| {
        let writers: Vec<_> = (1..=WRITERS)
            .map(|w| {
                let (store, start) = (&store, &start);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(w);
                    let mut committed = Vec::new();
                    start.wait();
                    for seq in 1..=BATCHES_PER_WRITER {
                        // Each batch lists the keys in its own order; the store sorts them.
                        let mut keys = SET;
                        rng.shuffle(&mut keys);
                        let ops = keys.iter().map(|&k| Op::set(k, tag(w, seq))).collect();
                        committed.push((store.batch(ops).unwrap(), tag(w, seq)));
                        maybe_yield(&mut rng, 2);
                    }
                    committed
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (store, start) = (&store, &start);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(100 + r as u64);
                    let mut passes: Vec<Pass> = Vec::with_capacity(PASSES_PER_READER);
                    start.wait();
                    for _ in 0..PASSES_PER_READER {
                        // Read the set in a random order, then its first key again.
                        let mut order = SET.to_vec();
                        rng.shuffle(&mut order);
                        order.push(order[0]);
                        // Reader 0 reads through one pin per pass, the others through `get`.
                        let mut pass: Pass = Vec::with_capacity(order.len());
                        if r == 0 {
                            let pinned = store.pin();
                            for &k in &order {
                                let e = pinned.get(&k).expect("every key of the set exists");
                                pass.push((k, e.modify_index, *e.value));
                                maybe_yield(&mut rng, 4);
                            }
                        } else {
                            for &k in &order {
                                let e = store.get(&k).expect("every key of the set exists");
                                pass.push((k, e.modify_index, e.value));
                                maybe_yield(&mut rng, 4);
                            }
                        }
                        check_pass(&pass);
                        passes.push(pass);
                    }
                    passes
                })
            })
            .collect();
        let committed: HashMap<u64, u64> = writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let passes: Vec<Pass> = readers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (committed, passes)
    });
    assert_eq!(
        committed.len() as u64,
        WRITERS * BATCHES_PER_WRITER,
        "indices not unique"
    );
    // Every version read is exactly what the batch at its index wrote.
    let mut seen_batches = std::collections::HashSet::new();
    for pass in &passes {
        for &(k, index, value) in pass {
            let wrote = if index == first {
                tag(0, 0)
            } else {
                *committed
                    .get(&index)
                    .unwrap_or_else(|| panic!("key {k} read at index {index}, no batch took it"))
            };
            assert_eq!(value, wrote, "key {k} at index {index}");
            seen_batches.insert(index);
        }
    }
    // Afterwards every key carries the last batch.
    let (&last, &last_tag) = committed.iter().max().unwrap();
    for k in SET {
        let e = store.get(&k).unwrap();
        assert_eq!((e.modify_index, e.value), (last, last_tag), "key {k}");
    }
    // Passes that saw more than one batch: the ones a torn batch could have fooled.
    let spanning = passes
        .iter()
        .filter(|p| p.iter().any(|r| r.1 != p[0].1))
        .count();
    eprintln!(
        "batch atomicity: {} passes over {} batches, {} distinct batches seen, {spanning} \
         passes saw more than one",
        passes.len(),
        committed.len(),
        seen_batches.len()
    );
    assert!(
        seen_batches.len() > 1,
        "the readers never ran alongside the writers"
    );
}

#[test]
fn overlapping_batches_in_opposite_key_order_do_not_deadlock() {
    const THREADS: usize = 4;
    const BATCHES_PER_THREAD: usize = 5000;
    const KEYS: u32 = 8;
    let store: Arc<Store<u32, u64>> = Arc::new(Store::new());
    let shared = Arc::clone(&store);
    let logs = within(Duration::from_secs(60), move || {
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, start) = (Arc::clone(&shared), Arc::clone(&start));
                std::thread::spawn(move || {
                    // Threads 0 and 1 take all keys, 2 and 3 overlapping halves; the even ones
                    // list them ascending and the odd ones descending.
                    let keys: Vec<u32> = match t {
                        0 | 1 => (0..KEYS).collect(),
                        2 => (0..KEYS / 2 + 2).collect(),
                        _ => (KEYS / 2 - 2..KEYS).collect(),
                    };
                    let keys: Vec<u32> = if t % 2 == 0 {
                        keys
                    } else {
                        keys.into_iter().rev().collect()
                    };
                    let mut log = Vec::with_capacity(BATCHES_PER_THREAD);
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    start.wait();
                    for seq in 0..BATCHES_PER_THREAD as u64 {
                        let value = tag(t as u64, seq);
                        let ops = keys.iter().map(|&k| Op::set(k, value)).collect();
                        log.push((store.batch(ops).unwrap(), value, keys.clone()));
                        maybe_yield(&mut rng, 2);
                    }
                    log
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(logs.len(), THREADS * BATCHES_PER_THREAD);
    // Each key ends with the value of the last batch (by index) that wrote it.
    let mut last: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (index, value, keys) in &logs {
        for k in keys {
            let slot = last.entry(*k).or_insert((0, 0));
            assert_ne!(slot.0, *index, "index {index} returned twice");
            if *index > slot.0 {
                *slot = (*index, *value);
            }
        }
    }
    for (k, (index, value)) in last {
        let e = store.get(&k).unwrap();
        assert_eq!((e.modify_index, e.value), (index, value), "key {k}");
    }
}

/// A successful operation on the contended key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    Created(u64),
    Deleted,
}

#[test]
fn delete_racing_recreate_loses_no_write() {
    const THREADS: u64 = 4;
    const OPS_PER_THREAD: usize = 15_000;
    const KEY: u32 = 7;
    let store: Store<u32, u64> = Store::new();
    let start = Barrier::new(THREADS as usize);
    let mut landed: Vec<(u64, Landed)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, start) = (&store, &start);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t);
                    let mut landed = Vec::new();
                    start.wait();
                    for i in 0..OPS_PER_THREAD {
                        let value = tag(t, i as u64);
                        match rng.u8(0..4) {
                            0 | 1 => match store.set_cas(KEY, value, 0) {
                                Ok(index) => landed.push((index, Landed::Created(value))),
                                Err(e) => assert!(e.is_conflict(), "create: {e:?}"),
                            },
                            2 => match store.delete(&KEY) {
                                Ok(index) => landed.push((index, Landed::Deleted)),
                                Err(e) => assert!(e.is_not_found(), "delete: {e:?}"),
                            },
                            _ => {
                                let Some(seen) = store.get(&KEY) else {
                                    continue;
                                };
                                maybe_yield(&mut rng, 2);
                                match store.delete_cas(&KEY, seen.modify_index) {
                                    Ok(index) => landed.push((index, Landed::Deleted)),
                                    Err(e) => assert!(
                                        e.is_conflict() || e.is_not_found(),
                                        "delete_cas: {e:?}"
                                    ),
                                }
                            }
                        }
                    }
                    landed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    landed.sort_unstable_by_key(|l| l.0);
    for w in landed.windows(2) {
        assert!(w[0].0 < w[1].0, "index {} returned twice", w[0].0);
    }
    // In index order the successes alternate, starting with a create: a create that succeeded
    // on a present key, or a delete of an absent one, means a write was lost.
    for (n, (index, l)) in landed.iter().enumerate() {
        let expect_create = n % 2 == 0;
        assert_eq!(
            matches!(l, Landed::Created(_)),
            expect_create,
            "success number {n} at index {index} is {l:?}: creates and deletes must alternate \
             (around it: {:?})",
            &landed[n.saturating_sub(3)..(n + 3).min(landed.len())]
        );
    }
    let creates = landed
        .iter()
        .filter(|l| matches!(l.1, Landed::Created(_)))
        .count();
    let deletes = landed.len() - creates;
    assert!(creates > 0 && deletes > 0);
    let now = store.get(&KEY);
    assert_eq!(now.is_some(), creates - deletes == 1);
    if let Some(e) = now {
        let &(index, last) = landed.last().unwrap();
        assert_eq!(last, Landed::Created(e.value));
        assert_eq!((e.modify_index, e.create_index), (index, index));
    }
    eprintln!("delete vs re-create: {creates} creates, {deletes} deletes");
}

#[test]
fn batches_and_single_key_cas_agree_on_overlapping_keys() {
    const KEYS: u64 = 4;
    const BATCH_THREADS: usize = 3;
    const SINGLE_THREADS: usize = 3;
    const ITERATIONS: usize = 4000;
    let store: Store<u64, u64> = Store::new();
    let start = Barrier::new(BATCH_THREADS + SINGLE_THREADS);
    let logs: Vec<(IncrementLog, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BATCH_THREADS + SINGLE_THREADS)
            .map(|t| {
                let (store, start) = (&store, &start);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(1000 + t as u64);
                    let mut log = Vec::new();
                    let mut failed_batches = 0;
                    start.wait();
                    for _ in 0..ITERATIONS {
                        if t >= BATCH_THREADS {
                            let key = rng.u64(0..KEYS);
                            let ((index, value), _) = cas_increment(store, key, &mut rng);
                            log.push((key, index, value));
                            continue;
                        }
                        // Increment 2–3 random keys in one batch of index CASes, and assert
                        // the index of one more key without writing it.
                        let mut keys: Vec<u64> = (0..KEYS).collect();
                        rng.shuffle(&mut keys);
                        let written = rng.usize(2..=3);
                        let read: Vec<(u64, u64, u64)> = keys[..written + 1]
                            .iter()
                            .map(|&k| {
                                let (v, i) =
                                    store.get(&k).map_or((0, 0), |e| (e.value, e.modify_index));
                                (k, v, i)
                            })
                            .collect();
                        let mut ops: Vec<Op<u64, u64>> = read[..written]
                            .iter()
                            .map(|&(k, v, i)| Op::set_cas(k, v + 1, i))
                            .collect();
                        maybe_yield(&mut rng, 2);
                        let (checked, _, at) = read[written];
                        ops.push(Op::check_index(checked, at));
                        match store.batch(ops) {
                            Ok(index) => {
                                for &(k, v, _) in &read[..written] {
                                    log.push((k, index, Some(v + 1)));
                                }
                            }
                            Err(e) => {
                                assert!(e.is_conflict(), "batch: {e:?}");
                                // Each reported conflict names a key of the batch whose index
                                // really moved since it was read.
                                for c in e.conflicts() {
                                    let (_, _, was) = *read.iter().find(|r| r.0 == c.key).unwrap();
                                    assert_ne!(c.current_index().unwrap_or(0), was, "{c:?}");
                                }
                                failed_batches += 1;
                            }
                        }
                    }
                    (log, failed_batches)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut per_key: BTreeMap<u64, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    let mut failed = 0;
    let mut batch_indices = HashMap::new();
    for (t, (log, f)) in logs.into_iter().enumerate() {
        failed += f;
        for (key, index, value) in log {
            if t < BATCH_THREADS {
                *batch_indices.entry(index).or_insert(0) += 1;
            }
            per_key.entry(key).or_default().push((index, value));
        }
    }
    let batches = batch_indices.len();
    assert!(batches > 0, "no batch succeeded");
    for key in 0..KEYS {
        check_increments(&store, key, per_key.entry(key).or_default());
    }
    eprintln!("batches vs single CAS: {batches} batches landed, {failed} failed");
}

// The checks above must be able to fail: fed a log a broken store could produce, they do.

#[test]
#[should_panic(expected = "an older batch after a newer one")]
fn check_pass_rejects_an_older_batch_read_after_a_newer_one() {
    check_pass(&vec![(10, 7, 70), (11, 5, 50), (12, 7, 70), (10, 7, 70)]);
}

#[test]
#[should_panic(expected = "two values at index")]
fn check_pass_rejects_two_values_at_one_index() {
    check_pass(&vec![(10, 7, 70), (11, 7, 71), (10, 9, 90)]);
}

#[test]
#[should_panic(expected = "an older batch after a newer one")]
fn check_pass_rejects_a_quiet_pass_that_saw_two_batches() {
    // Key 10 at index 7 before and after, yet key 11 already at 9: a batch half applied.
    check_pass(&vec![(10, 7, 70), (11, 9, 90), (10, 7, 70)]);
}

#[test]
#[should_panic(expected = "but it is increment number 2 in index order")]
fn check_increments_rejects_a_lost_update() {
    // Two increments both wrote 1: one of them overwrote the other.
    let store: Store<u64, u64> = Store::new();
    store.set(0, 1);
    check_increments(&store, 0, &mut [(1, Some(1)), (2, Some(1))]);
}

#[test]
#[should_panic(expected = "value vs successful increments")]
fn check_increments_rejects_a_final_value_off_the_count() {
    let store: Store<u64, u64> = Store::new();
    let a = store.set(0, 1);
    let b = store.set(0, 2);
    store.set(0, 5);
    check_increments(&store, 0, &mut [(a, Some(1)), (b, Some(2))]);
}
