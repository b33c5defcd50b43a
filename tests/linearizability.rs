//! Linearizability of caskv, checked on real concurrent histories.
//!
//! # What is checked
//! Threads run random operations against one store and record, for each operation, what was
//! called, what came back, and two instants on a shared logical clock: one taken right before
//! the call and one right after the return. A history is **linearizable** if some total order
//! of its operations (1) respects real time, so an operation that returned before another was
//! invoked comes first, and (2) is a legal run of a sequential model of the store.
//!
//! The checker, its two models (per key, and the whole map for histories with batches) and the
//! search live in `tests/support/lin.rs`, shared with the `store_concurrent` fuzz target; its
//! docs say how the search works and what each model accepts.
//!
//! # Running
//! `cargo test --test linearizability -- --nocapture` prints how many operations were checked.
//! For a long hunt: `CASKV_LIN_ROUNDS=20000 cargo test --release --test linearizability --
//! --nocapture`; `CASKV_LIN_SEED` fixes the operation choices (not the interleavings). A
//! rejected history is printed whole, in call order, with the longest legal prefix found;
//! versions print as `value/flags@modify_index^create_index`.
//!
//! # Proof that it can fail
//! The self-tests check hand-written histories (one linearizable, several not), and run the
//! very same recorder against a `Mutex<BTreeMap>` store: correct (it must pass, which shows the
//! models are not stricter than the contract) and with one planted bug at a time (a CAS that
//! accepts a stale index, a read that returns a stale version, a batch applied key by key with a
//! visible gap, indices reused after a delete), each of which the checker must report.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use caskv::{Journal, ManualClock, Mutation, Store};
use support::lin::*;

// ---------------------------------------------------------------------------------------------
// Stores under test (the real `Store`'s `Target` impl is in `support::lin`)
// ---------------------------------------------------------------------------------------------

/// A planted bug of [`MutexStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// None: a correct reference store.
    None,
    /// An index CAS also succeeds against the version before the current one.
    StaleCas,
    /// Every third read returns the version before the current one.
    StaleRead,
    /// A batch is validated under the lock, then applied one key per lock acquisition.
    TornBatch,
    /// A write's index is one above the highest surviving `modify_index` (Konsul's rule),
    /// which reuses indices after a delete.
    ReusedIndex,
}

/// A store behind one mutex, correct unless a [`Bug`] is planted.
struct MutexStore {
    bug: Bug,
    inner: Mutex<MutexState>,
}

#[derive(Default)]
struct MutexState {
    map: BTreeMap<Key, Ver>,
    /// Each key's version before its last write or delete.
    prev: BTreeMap<Key, Ver>,
    last_index: u64,
    reads: u64,
}

/// What a batch does to one key once validated.
enum Effect {
    Write(u32),
    Remove,
    Keep,
}

impl MutexStore {
    fn new(bug: Bug) -> Self {
        MutexStore {
            bug,
            inner: Mutex::new(MutexState::default()),
        }
    }
}

impl MutexState {
    fn next_index(&mut self, bug: Bug) -> u64 {
        if bug == Bug::ReusedIndex {
            self.map.values().map(|v| v.modify).max().unwrap_or(0) + 1
        } else {
            self.last_index += 1;
            self.last_index
        }
    }

    fn index_holds(&self, bug: Bug, key: Key, expected: u64) -> bool {
        match (expected, self.map.get(&key)) {
            (0, None) => true,
            (0, Some(_)) | (_, None) => false,
            (n, Some(v)) => {
                v.modify == n
                    || (bug == Bug::StaleCas && self.prev.get(&key).is_some_and(|p| p.modify == n))
            }
        }
    }

    fn value_holds(&self, key: Key, expected: Option<u32>) -> bool {
        match (expected, self.map.get(&key)) {
            (None, None) => true,
            (Some(e), Some(v)) => v.value == e,
            _ => false,
        }
    }

    fn write(&mut self, key: Key, value: u32, flags: Option<u64>, index: u64) -> u64 {
        let old = self.map.get(&key).cloned();
        let ver = Ver {
            value,
            flags: flags.unwrap_or_else(|| old.as_ref().map_or(0, |v| v.flags)),
            modify: index,
            create: old.as_ref().map_or(index, |v| v.create),
            deadline: 0,
        };
        if let Some(old) = old {
            self.prev.insert(key, old);
        }
        self.map.insert(key, ver);
        index
    }

    fn remove(&mut self, key: Key, index: u64) -> u64 {
        if let Some(old) = self.map.remove(&key) {
            self.prev.insert(key, old);
        }
        index
    }

    fn current(&self, key: Key) -> Option<Ver> {
        self.map.get(&key).cloned()
    }

    /// The failure of a single-key index condition.
    fn index_failure(&self, key: Key) -> Outcome {
        match self.current(key) {
            None => Outcome::NotFound,
            Some(v) => Outcome::Conflict(Some(v)),
        }
    }
}

impl Target for MutexStore {
    fn apply(&self, call: &Call) -> Outcome {
        let bug = self.bug;
        let mut s = self.inner.lock().unwrap();
        match call {
            // Only the fuzz target calls these; the workloads of this file never do.
            // And the timed workloads run against caskv alone.
            Call::SetCasFlags(..)
            | Call::Update(..)
            | Call::GetMany(_)
            | Call::SetTtl(..)
            | Call::Purge
            | Call::Advance(_)
            | Call::Expire(..) => {
                unreachable!("the reference store does not model {call:?}")
            }
            Call::Get(k) | Call::PinnedGet(k) => {
                s.reads += 1;
                if bug == Bug::StaleRead && s.reads.is_multiple_of(3) && s.prev.contains_key(k) {
                    return Outcome::Read(s.prev.get(k).cloned());
                }
                Outcome::Read(s.current(*k))
            }
            Call::Set(k, v) => {
                let i = s.next_index(bug);
                Outcome::Wrote(s.write(*k, *v, None, i))
            }
            Call::SetFlags(k, v, f) => {
                let i = s.next_index(bug);
                Outcome::Wrote(s.write(*k, *v, Some(*f), i))
            }
            Call::SetCas(k, v, e) => {
                if !s.index_holds(bug, *k, *e) {
                    return s.index_failure(*k);
                }
                let i = s.next_index(bug);
                Outcome::Wrote(s.write(*k, *v, None, i))
            }
            Call::Delete(k) => {
                if s.current(*k).is_none() {
                    return Outcome::NotFound;
                }
                let i = s.next_index(bug);
                Outcome::Wrote(s.remove(*k, i))
            }
            Call::DeleteCas(k, e) => {
                if !s.index_holds(bug, *k, *e) {
                    return s.index_failure(*k);
                }
                let i = s.next_index(bug);
                Outcome::Wrote(s.remove(*k, i))
            }
            Call::Cas(k, e, new) => {
                if !s.value_holds(*k, *e) {
                    return Outcome::Conflict(s.current(*k));
                }
                match (new, s.current(*k)) {
                    (Some(v), _) => {
                        let i = s.next_index(bug);
                        Outcome::Wrote(s.write(*k, *v, None, i))
                    }
                    (None, Some(_)) => {
                        let i = s.next_index(bug);
                        Outcome::Wrote(s.remove(*k, i))
                    }
                    (None, None) => Outcome::Nothing,
                }
            }
            Call::Batch(ops) => {
                let mut failing = Vec::new();
                let mut effects = Vec::new();
                for op in ops {
                    let k = op.key();
                    let (holds, effect) = match op {
                        BatchOp::Set(_, v) => (true, Effect::Write(*v)),
                        BatchOp::SetFlags(..) => {
                            unreachable!("the reference store does not model {op:?}")
                        }
                        BatchOp::SetCas(_, v, e) => (s.index_holds(bug, k, *e), Effect::Write(*v)),
                        BatchOp::Delete(_) => (s.current(k).is_some(), Effect::Remove),
                        BatchOp::DeleteCas(_, e) => (s.index_holds(bug, k, *e), Effect::Remove),
                        BatchOp::CheckIndex(_, e) => (s.index_holds(bug, k, *e), Effect::Keep),
                        BatchOp::Cas(_, e, Some(v)) => (s.value_holds(k, *e), Effect::Write(*v)),
                        BatchOp::Cas(_, e, None) => (
                            s.value_holds(k, *e),
                            if s.current(k).is_some() {
                                Effect::Remove
                            } else {
                                Effect::Keep
                            },
                        ),
                    };
                    if holds {
                        effects.push((k, effect));
                    } else {
                        failing.push((k, s.current(k)));
                    }
                }
                if !failing.is_empty() {
                    failing.sort_by_key(|f| f.0);
                    return Outcome::BatchConflict(failing);
                }
                let i = s.next_index(bug);
                for (k, effect) in effects {
                    if bug == Bug::TornBatch {
                        // The planted bug: other threads run between the keys of the batch.
                        drop(s);
                        std::thread::yield_now();
                        s = self.inner.lock().unwrap();
                    }
                    match effect {
                        Effect::Write(v) => {
                            s.write(k, v, None, i);
                        }
                        Effect::Remove => {
                            s.remove(k, i);
                        }
                        Effect::Keep => {}
                    }
                }
                Outcome::Wrote(i)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recording histories
// ---------------------------------------------------------------------------------------------

/// The shape of one round of random operations.
#[derive(Debug, Clone, Copy)]
struct Workload {
    threads: usize,
    ops_per_thread: usize,
    keys: u8,
    /// Percentage of operations that are batches (0 for per-key histories).
    batch_percent: u8,
    /// Percentage of single-key operations that are sets with a TTL of 1–4 ms of the store's
    /// test clock, or (one in five of those) purges (0 but for timed histories).
    ttl_percent: u8,
    /// How many operations a thread may run ahead of the slowest one. With more threads than
    /// cores, a round would otherwise be over before the scheduler ever ran the threads it did
    /// not start first, and those would never overlap the others.
    window: usize,
}

/// What one thread knows of each key's indices, to pick plausible and stale CAS indices.
struct View {
    seen: Vec<Vec<u64>>,
}

impl View {
    fn new(keys: u8) -> Self {
        View {
            seen: vec![Vec::new(); usize::from(keys)],
        }
    }

    fn note(&mut self, key: Key, index: u64) {
        let seen = &mut self.seen[usize::from(key)];
        if seen.last() != Some(&index) {
            seen.push(index);
        }
    }

    /// Learns the indices an outcome reveals.
    fn learn(&mut self, call: &Call, outcome: &Outcome) {
        match (call, outcome) {
            (Call::Batch(ops), Outcome::Wrote(i)) => {
                for op in ops {
                    self.note(op.key(), *i);
                }
            }
            (_, Outcome::BatchConflict(failing)) => {
                for (k, v) in failing {
                    if let Some(v) = v {
                        self.note(*k, v.modify);
                    }
                }
            }
            (call, Outcome::Wrote(i)) => self.note(call.key().unwrap(), *i),
            (call, Outcome::Read(Some(v)) | Outcome::Conflict(Some(v))) => {
                self.note(call.key().unwrap(), v.modify);
            }
            _ => {}
        }
    }

    /// An index condition: mostly the latest index this thread saw, sometimes 0 (absent), an
    /// older one (stale), or an arbitrary one.
    fn pick_index(&self, rng: &mut fastrand::Rng, key: Key) -> u64 {
        let seen = &self.seen[usize::from(key)];
        match rng.u8(0..10) {
            0..=2 => 0,
            3..=6 => seen.last().copied().unwrap_or(0),
            7..=8 if !seen.is_empty() => seen[rng.usize(..seen.len())],
            _ => rng.u64(1..64),
        }
    }

    /// An index condition for a delete, never 0 (that is an invalid argument).
    fn pick_delete_index(&self, rng: &mut fastrand::Rng, key: Key) -> u64 {
        match self.pick_index(rng, key) {
            0 => rng.u64(1..64),
            n => n,
        }
    }
}

fn maybe_value(rng: &mut fastrand::Rng, percent_some: u8) -> Option<u32> {
    (rng.u8(0..100) < percent_some).then(|| rng.u32(0..4))
}

fn random_call(rng: &mut fastrand::Rng, view: &View, w: &Workload) -> Call {
    if rng.u8(0..100) < w.batch_percent {
        let mut keys: Vec<Key> = (0..w.keys).collect();
        rng.shuffle(&mut keys);
        keys.truncate(rng.usize(2..=usize::from(w.keys)));
        let ops = keys
            .into_iter()
            .map(|k| {
                let v = rng.u32(0..4);
                match rng.u8(0..100) {
                    0..=44 => BatchOp::Set(k, v),
                    45..=69 => BatchOp::SetCas(k, v, view.pick_index(rng, k)),
                    70..=75 => BatchOp::Delete(k),
                    76..=81 => BatchOp::DeleteCas(k, view.pick_delete_index(rng, k)),
                    82..=90 => BatchOp::CheckIndex(k, view.pick_index(rng, k)),
                    _ => BatchOp::Cas(k, maybe_value(rng, 70), maybe_value(rng, 85)),
                }
            })
            .collect();
        return Call::Batch(ops);
    }
    let k = rng.u8(0..w.keys);
    let v = rng.u32(0..4);
    if rng.u8(0..100) < w.ttl_percent {
        return match rng.u8(0..5) {
            0 => Call::Purge,
            _ => Call::SetTtl(k, v, rng.u64(1..=4)),
        };
    }
    match rng.u8(0..100) {
        0..=21 => Call::Get(k),
        22..=29 => Call::PinnedGet(k),
        30..=41 => Call::Set(k, v),
        42..=45 => Call::SetFlags(k, v, rng.u64(0..3)),
        46..=65 => Call::SetCas(k, v, view.pick_index(rng, k)),
        66..=73 => Call::Delete(k),
        74..=83 => Call::DeleteCas(k, view.pick_delete_index(rng, k)),
        _ => Call::Cas(k, maybe_value(rng, 70), maybe_value(rng, 80)),
    }
}

/// Runs one round of `w` against `target` and returns its history.
fn record<T: Target>(target: &T, w: &Workload, seed: u64) -> Vec<Event<Record>> {
    record_on(target, w, seed, &AtomicU64::new(0))
}

/// [`record`], stamping `clock` (a timed history records several phases on one clock).
///
/// Each thread stamps the shared logical clock right before each call and right after each
/// return. The stamps are SeqCst read-modify-writes of one atomic, so an operation whose return
/// stamp is below another's call stamp happens-before it: real-time order as the checker needs
/// it, without wall time.
fn record_on<T: Target>(
    target: &T,
    w: &Workload,
    seed: u64,
    clock: &AtomicU64,
) -> Vec<Event<Record>> {
    let start = Barrier::new(w.threads);
    // Operations completed by each thread, for the lockstep.
    let done: Vec<AtomicUsize> = (0..w.threads).map(|_| AtomicUsize::new(0)).collect();
    let per_thread: Vec<Vec<Event<Record>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..w.threads)
            .map(|t| {
                let (start, done) = (&start, &done);
                s.spawn(move || {
                    let mut rng =
                        fastrand::Rng::with_seed(seed ^ (t as u64).wrapping_mul(0x9e37_79b9));
                    let mut view = View::new(w.keys);
                    let mut events = Vec::with_capacity(w.ops_per_thread);
                    start.wait();
                    for i in 0..w.ops_per_thread {
                        let call = random_call(&mut rng, &view, w);
                        // Wait for the slowest thread to come within the window. SeqCst (and
                        // below) only for simplicity; the counters order nothing the checker
                        // relies on.
                        let mut spins = 0u32;
                        while done.iter().any(|d| d.load(Ordering::SeqCst) + w.window < i) {
                            // Spin while the laggard may be running on another core; yield
                            // when it probably is not.
                            spins += 1;
                            if spins.is_multiple_of(256) {
                                std::thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        // A short random pause, so threads drift against each other and
                        // their operations overlap in many different ways.
                        for _ in 0..rng.u32(0..32) {
                            std::hint::spin_loop();
                        }
                        let t0 = clock.fetch_add(1, Ordering::SeqCst);
                        let outcome = target.apply(&call);
                        let t1 = clock.fetch_add(1, Ordering::SeqCst);
                        done[t].store(i + 1, Ordering::SeqCst);
                        view.learn(&call, &outcome);
                        events.push(Event {
                            op: Record { call, outcome },
                            call: t0,
                            ret: t1,
                            thread: t,
                        });
                    }
                    events
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    per_thread.into_iter().flatten().collect()
}

/// Which checker a round goes through.
#[derive(Debug, Clone, Copy)]
enum Mode {
    PerKey,
    Map,
}

fn check_round(history: &[Event<Record>], mode: Mode, keys: u8) -> Result<(), String> {
    check_unique_indices(history)?;
    models_only(history, mode, keys)
}

/// The base seed: `CASKV_LIN_SEED` if set, else random (printed, to replay the op choices).
fn base_seed() -> u64 {
    std::env::var("CASKV_LIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// A workload for round `round` of `mode`: 2–4 keys, 3–4 threads, 36–56 operations, and a
/// lockstep window of 1, 2 or 4 operations; the combinations cycle over the rounds.
fn workload(mode: Mode, round: usize) -> Workload {
    let (ops_per_thread, batch_percent) = match mode {
        Mode::PerKey => (14, 0),
        Mode::Map => (12, 25),
    };
    Workload {
        threads: 3 + round % 2,
        ops_per_thread,
        keys: 2 + (round % 3) as u8,
        batch_percent,
        ttl_percent: 0,
        window: [1, 2, 4][(round / 6) % 3],
    }
}

/// Runs `rounds` fresh stores through `mode`, asserting each history linearizable. Returns the
/// number of operations checked.
fn run_rounds(mode: Mode, rounds: usize) -> usize {
    let seed = base_seed();
    let started = Instant::now();
    let mut ops = 0;
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut overlapping = 0;
    for round in 0..rounds {
        let w = workload(mode, round);
        let store: Store<Key, u32> = Store::new();
        let round_seed = seed.wrapping_add(round as u64);
        let history = record(&store, &w, round_seed);
        for e in &history {
            *outcomes.entry(outcome_kind(&e.op)).or_default() += 1;
        }
        overlapping += overlapping_ops(&history);
        if let Err(report) = check_round(&history, mode, w.keys) {
            panic!("{mode:?} round {round} (seed {round_seed}, {w:?}): {report}");
        }
        ops += history.len();
    }
    eprintln!(
        "linearizability {mode:?}: {ops} operations in {rounds} histories checked in {:.2?} \
         (seed {seed}); {overlapping} overlapped another thread's; outcomes {outcomes:?}",
        started.elapsed()
    );
    ops
}

/// How many operations of `history` overlap in time with an operation of another thread: the
/// ones whose order the checker had to search for.
fn overlapping_ops(history: &[Event<Record>]) -> usize {
    history
        .iter()
        .filter(|a| {
            history
                .iter()
                .any(|b| b.thread != a.thread && b.call < a.ret && a.call < b.ret)
        })
        .count()
}

/// A coarse label of an operation's outcome, to show the workload exercises every path.
fn outcome_kind(r: &Record) -> &'static str {
    match (&r.call, &r.outcome) {
        (Call::Batch(_), Outcome::Wrote(_)) => "batch ok",
        (Call::Batch(_), _) => "batch failed",
        (_, Outcome::Read(Some(_))) => "read present",
        (_, Outcome::Read(None)) => "read absent",
        (_, Outcome::Wrote(_)) => "write ok",
        (_, Outcome::Nothing) => "cas nothing",
        (_, Outcome::NotFound) => "not found",
        (_, Outcome::Conflict(_)) => "conflict",
        (_, Outcome::BatchConflict(_)) => "batch conflict on single op",
        (_, Outcome::ReadMany(_)) => "read many",
        (_, Outcome::GaveUp) => "update gave up",
        (_, Outcome::Invalid(_)) => "invalid",
        (_, Outcome::Unexpected(_)) => "unexpected",
    }
}

// ---------------------------------------------------------------------------------------------
// The tests against caskv
// ---------------------------------------------------------------------------------------------

/// Rounds per mode: `CASKV_LIN_ROUNDS` if set (for long hunts, best with `--release`), else a
/// number that checks thousands of operations in well under a second in debug builds.
fn rounds() -> usize {
    std::env::var("CASKV_LIN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn single_key_operations_are_linearizable_per_key() {
    let ops = run_rounds(Mode::PerKey, rounds());
    assert!(ops >= rounds() * 36, "too few operations checked: {ops}");
}

#[test]
fn histories_with_batches_are_linearizable_as_a_whole_map() {
    let ops = run_rounds(Mode::Map, rounds());
    assert!(ops >= rounds() * 36, "too few operations checked: {ops}");
}

// ---------------------------------------------------------------------------------------------
// The change feed: every read a gap-free prefix of the index order the checker accepted
// ---------------------------------------------------------------------------------------------

/// Histories with batches on a store that keeps a history, while a reader follows the feed.
/// Each round must be linearizable (as above) and, for its feed:
/// - the final feed holds exactly the indices the operations returned as writes, in increasing
///   order, each event naming the keys its operation wrote (a batch: the keys it changed);
/// - every read the reader made during the round is a prefix of the final feed;
/// - replaying the final feed in order over an empty map gives the store's final contents
///   (values and both indices): the feed is the order in which the store's state was built.
#[test]
fn the_feed_is_a_gap_free_prefix_of_the_index_order() {
    use caskv::{Change, HistoryLimits};
    let seed = base_seed();
    let rounds = rounds() / 4;
    let (mut ops, mut reads) = (0, 0);
    for round in 0..rounds {
        let w = workload(Mode::Map, round);
        let store: Store<Key, u32> = Store::builder().history(HistoryLimits::default()).build();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (history, snapshots) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut snapshots = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    snapshots.push(store.changes(0).unwrap());
                }
                snapshots
            });
            let history = record(&store, &w, seed.wrapping_add(round as u64));
            done.store(true, Ordering::SeqCst);
            (history, reader.join().unwrap())
        });
        if let Err(report) = check_round(&history, Mode::Map, w.keys) {
            panic!("round {round} (seed {seed}): {report}");
        }
        let feed = store.changes(0).unwrap();
        // Exactly the writes, in index order, each with its keys.
        let mut wrote: Vec<(u64, Vec<Key>)> = history
            .iter()
            .filter_map(|e| match (&e.op.call, &e.op.outcome) {
                (Call::Batch(ops), Outcome::Wrote(i)) => Some((
                    *i,
                    ops.iter()
                        .filter(|op| !matches!(op, BatchOp::CheckIndex(..)))
                        .map(BatchOp::key)
                        .collect(),
                )),
                (call, Outcome::Wrote(i)) => Some((*i, vec![call.key().unwrap()])),
                _ => None,
            })
            .collect();
        wrote.sort();
        let fed: Vec<(u64, Vec<Key>)> = feed
            .iter()
            .map(|c| match &**c {
                Change::Set { key, entry } => (entry.modify_index, vec![*key]),
                Change::Delete { key, index } => (*index, vec![*key]),
                Change::Batch { index, writes } => {
                    (*index, writes.iter().map(|(k, _)| *k).collect())
                }
                other => panic!("an unknown change {other:?}"),
            })
            .collect();
        // A batch's unconditional ops on absent keys and value-CASes that keep a value may
        // write nothing to a key; compare indices exactly and keys as a subset.
        assert_eq!(
            fed.iter().map(|f| f.0).collect::<Vec<_>>(),
            wrote.iter().map(|w| w.0).collect::<Vec<_>>(),
            "round {round}: the feed's indices are not the writes'"
        );
        for (f, w) in fed.iter().zip(&wrote) {
            assert!(
                f.1.iter().all(|k| w.1.contains(k)),
                "round {round}: index {} fed keys {:?}, the write named {:?}",
                f.0,
                f.1,
                w.1
            );
        }
        // Every read a prefix.
        for snapshot in &snapshots {
            assert!(snapshot.len() <= feed.len());
            assert!(
                snapshot.iter().zip(feed.iter()).all(|(a, b)| a == b),
                "round {round}: a read that is not a prefix of the final feed"
            );
        }
        // Replaying the feed builds the store's state.
        let mut replay: BTreeMap<Key, (u32, u64, u64)> = BTreeMap::new();
        for change in &feed {
            match &**change {
                Change::Set { key, entry } => {
                    replay.insert(*key, (entry.value, entry.modify_index, entry.create_index));
                }
                Change::Delete { key, .. } => {
                    replay.remove(key);
                }
                Change::Batch { writes, .. } => {
                    for (key, entry) in writes {
                        match entry {
                            Some(e) => {
                                replay.insert(*key, (e.value, e.modify_index, e.create_index))
                            }
                            None => replay.remove(key),
                        };
                    }
                }
                other => panic!("an unknown change {other:?}"),
            }
        }
        let now: BTreeMap<Key, (u32, u64, u64)> = store
            .entries()
            .into_iter()
            .map(|(k, e)| (k, (e.value, e.modify_index, e.create_index)))
            .collect();
        assert_eq!(
            replay, now,
            "round {round}: replaying the feed differs from the store"
        );
        ops += history.len();
        reads += snapshots.len();
    }
    eprintln!("feed: {ops} operations in {rounds} histories, {reads} reads of the feed checked");
    assert!(ops >= rounds * 36);
}

// ---------------------------------------------------------------------------------------------
// Time: an expiry is a delete at its own index
// ---------------------------------------------------------------------------------------------

/// Where a timed history's store clock starts, in ms.
const TIMED_START_MS: u64 = 1_000;
/// The phases of a timed history, and how far the clock moves between two (TTLs are 1–4 ms, so
/// versions written in one phase expire one or two phases later).
const PHASES: usize = 4;
const STEP_MS: u64 = 2;

/// What a timed round's journal saw: each delete (key, index) with the logical instant it was
/// recorded at, which is after the delete became visible.
#[derive(Default)]
struct DeleteLog {
    clock: AtomicU64,
    deletes: Mutex<Vec<(Key, u64, u64)>>,
}

/// The journal of a timed round's store.
struct DeleteJournal(Arc<DeleteLog>);

impl Journal<Key, u32> for DeleteJournal {
    fn record(&self, m: Mutation<'_, Key, u32>) -> u64 {
        if let Mutation::Delete { key, index } = m {
            // SeqCst: one total order with the history's stamps.
            let stamp = self.0.clock.fetch_add(1, Ordering::SeqCst);
            self.0.deletes.lock().unwrap().push((*key, index, stamp));
        }
        0
    }
}

/// Runs `rounds` timed histories: a journaled store on a test clock; phases of random
/// operations (batches, sets with TTLs, purges) with the clock moved between them while no
/// operation runs. Each delete the store journaled that no operation returned is an expiry,
/// added to the history as a [`Call::Expire`] between the start of its phase and the moment
/// it was journaled; the whole history must then be linearizable under the map model, and the
/// eviction listener must have been told of each expiry once. Returns (operations checked,
/// expiries among them).
fn run_timed_rounds(rounds: usize) -> (usize, usize) {
    let seed = base_seed();
    let started = Instant::now();
    let (mut ops, mut expiries) = (0, 0);
    for round in 0..rounds {
        let w = Workload {
            ttl_percent: 35,
            ..workload(Mode::Map, round)
        };
        let log = Arc::new(DeleteLog::default());
        let time = Arc::new(ManualClock::new(TIMED_START_MS));
        let told = Arc::new(AtomicUsize::new(0));
        let counted = told.clone();
        let store: Store<Key, u32> = Store::builder()
            .clock(time.clone())
            .eviction_listener(move |_, _, cause| {
                assert_eq!(cause, caskv::RemovalCause::Expired);
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .build_journaled(Box::new(DeleteJournal(log.clone())));
        let round_seed = seed.wrapping_add(round as u64);
        let clock = &log.clock;
        let mut history = Vec::new();
        // Each phase's first stamp: `keys` stamps reserved for the calls of its expiries (at
        // most one per key: a version written in a phase expires in a later one).
        let mut phase_starts = Vec::new();
        for phase in 0..PHASES {
            if phase > 0 {
                let t0 = clock.fetch_add(1, Ordering::SeqCst);
                time.advance(std::time::Duration::from_millis(STEP_MS));
                let t1 = clock.fetch_add(1, Ordering::SeqCst);
                history.push(Event {
                    op: Record {
                        call: Call::Advance(STEP_MS),
                        outcome: Outcome::Nothing,
                    },
                    call: t0,
                    ret: t1,
                    thread: w.threads,
                });
            }
            phase_starts.push(clock.fetch_add(u64::from(w.keys), Ordering::SeqCst));
            let phase_seed = round_seed ^ (phase as u64).wrapping_mul(0x51_7cc1_b727_220a);
            history.extend(record_on(&store, &w, phase_seed, clock));
        }
        let returned: HashSet<u64> = history
            .iter()
            .filter_map(|e| match e.op.outcome {
                Outcome::Wrote(i) => Some(i),
                _ => None,
            })
            .collect();
        let mut in_phase = [0u64; PHASES];
        let mut expired = 0;
        for &(key, index, stamp) in log.deletes.lock().unwrap().iter() {
            if returned.contains(&index) {
                continue; // a delete some operation made and returned
            }
            let phase = phase_starts.iter().rposition(|&s| s < stamp).unwrap();
            assert!(
                phase > 0,
                "an expiry before the clock moved: {key} at {index}"
            );
            let call = phase_starts[phase] + in_phase[phase];
            in_phase[phase] += 1;
            assert!(
                in_phase[phase] <= u64::from(w.keys),
                "two expiries of one key in a phase"
            );
            history.push(Event {
                op: Record {
                    call: Call::Expire(key, index),
                    outcome: Outcome::Nothing,
                },
                call,
                ret: stamp,
                thread: w.threads + 1,
            });
            expired += 1;
        }
        assert_eq!(
            told.load(Ordering::SeqCst),
            expired,
            "round {round}: the listener was not told of each expiry once"
        );
        let model = MapModel {
            keys: usize::from(w.keys),
            max_batch: caskv::defaults::MAX_BATCH,
            start_ms: TIMED_START_MS,
        };
        if let Err(report) =
            check_unique_indices(&history).and_then(|()| check_map_model(&model, &history))
        {
            panic!("timed round {round} (seed {round_seed}, {w:?}): {report}");
        }
        ops += history.len();
        expiries += expired;
    }
    eprintln!(
        "linearizability with time: {ops} operations ({expiries} expiries) in {rounds} \
         histories checked in {:.2?} (seed {seed})",
        started.elapsed()
    );
    (ops, expiries)
}

#[test]
fn expiries_are_deletes_at_their_own_indices_in_each_keys_order() {
    let rounds = rounds() / 4;
    let (ops, expiries) = run_timed_rounds(rounds);
    assert!(
        ops >= rounds * 36 * PHASES,
        "too few operations checked: {ops}"
    );
    assert!(
        expiries >= rounds,
        "too few expiries to tell anything: {expiries} in {rounds} rounds"
    );
}

// ---------------------------------------------------------------------------------------------
// Self-tests: the checker accepts what it must and rejects what it must
// ---------------------------------------------------------------------------------------------

fn ver(value: u32, modify: u64, create: u64) -> Option<Ver> {
    Some(Ver {
        value,
        flags: 0,
        modify,
        create,
        deadline: 0,
    })
}

/// A hand-written event on thread `thread`.
fn ev(thread: usize, call: Call, outcome: Outcome, at: (u64, u64)) -> Event<Record> {
    Event {
        op: Record { call, outcome },
        call: at.0,
        ret: at.1,
        thread,
    }
}

#[test]
fn hand_written_linearizable_histories_pass() {
    use Outcome::*;
    // Two overlapping sets: the one at index 1 must come first (indices increase per key), and
    // a read overlapping both may see the first; a read after both sees the second, with the
    // create index of the first.
    let h = vec![
        ev(0, Call::Set(0, 1), Wrote(1), (0, 5)),
        ev(1, Call::Set(0, 2), Wrote(2), (1, 6)),
        ev(2, Call::Get(0), Read(ver(1, 1, 1)), (2, 3)),
        ev(2, Call::Get(0), Read(ver(2, 2, 1)), (7, 8)),
        // A CAS at the current index, concurrent with a stale one that fails.
        ev(0, Call::SetCas(0, 3, 2), Wrote(4), (9, 12)),
        ev(1, Call::SetCas(0, 4, 1), Conflict(ver(2, 2, 1)), (10, 11)),
        ev(2, Call::Cas(0, Some(3), None), Wrote(5), (13, 14)),
        ev(2, Call::Cas(0, None, None), Nothing, (15, 16)),
        ev(2, Call::SetCas(0, 0, 0), Wrote(6), (17, 18)),
    ];
    check(&KeyModel, &h).unwrap_or_else(|why| panic!("{}", explain(&h, &why)));
    check_per_key(&h).unwrap();
    check_map(&h, 1).unwrap();

    // A batch concurrent with reads that see all of it or none of it.
    let h = vec![
        ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
        ev(0, Call::Set(1, 1), Wrote(2), (2, 3)),
        ev(
            0,
            Call::Batch(vec![BatchOp::Set(0, 2), BatchOp::SetCas(1, 2, 2)]),
            Wrote(3),
            (4, 11),
        ),
        ev(1, Call::Get(1), Read(ver(1, 2, 2)), (5, 6)),
        ev(1, Call::Get(0), Read(ver(2, 3, 1)), (7, 8)),
        ev(1, Call::Get(1), Read(ver(2, 3, 2)), (9, 10)),
    ];
    check_map(&h, 2).unwrap();
}

/// The map model with time, on hand-written histories: a version with a TTL is gone for readers
/// once the clock passes its deadline, and its expiry is a delete at an index of its own, in
/// the key's order (above what the key carried, below the write that met it).
#[test]
fn hand_written_histories_with_time() {
    use Outcome::*;
    let model = MapModel {
        keys: 1,
        max_batch: 4,
        start_ms: 100,
    };
    let verdict = |h: &[Event<Record>]| match check(&model, h) {
        Ok(()) => true,
        Err(Rejection::NotLinearizable { .. }) => false,
        Err(why) => panic!("{why:?}"),
    };
    let with_ttl = |value, modify, create, deadline| {
        Some(Ver {
            value,
            flags: 0,
            modify,
            create,
            deadline,
        })
    };
    // Written at 100 with 5 ms to live, read before the clock moves; then the clock moves 5.
    let start = || {
        vec![
            ev(0, Call::SetTtl(0, 1, 5), Wrote(1), (0, 1)),
            ev(1, Call::Get(0), Read(with_ttl(1, 1, 1, 105)), (2, 3)),
            ev(2, Call::Advance(5), Nothing, (4, 5)),
        ]
    };
    assert!(verdict(&start()));
    // A wrong deadline is caught.
    let mut h = start();
    h[1] = ev(1, Call::Get(0), Read(with_ttl(1, 1, 1, 106)), (2, 3));
    assert!(!verdict(&h));
    // After the clock passed the deadline, a read sees nothing, delete or no delete yet.
    let mut h = start();
    h.push(ev(1, Call::Get(0), Read(None), (6, 7)));
    assert!(verdict(&h));
    h.push(ev(1, Call::Get(0), Read(with_ttl(1, 1, 1, 105)), (8, 9)));
    assert!(!verdict(&h), "an expired version was read");
    // A write meets the expired version: the expiry's delete comes first, at its own index,
    // and the write creates the key afresh.
    let met = |expire_index, write_index, read| {
        let mut h = start();
        h.push(ev(3, Call::Expire(0, expire_index), Nothing, (6, 9)));
        h.push(ev(0, Call::Set(0, 7), Wrote(write_index), (7, 8)));
        h.push(ev(1, Call::Get(0), Read(read), (10, 11)));
        h
    };
    assert!(verdict(&met(2, 3, with_ttl(7, 3, 3, 0))));
    assert!(
        !verdict(&met(3, 2, with_ttl(7, 2, 2, 0))),
        "an expiry's delete came after the write that met it"
    );
    assert!(
        !verdict(&met(2, 3, with_ttl(7, 3, 1, 0))),
        "the write kept the expired version's create index"
    );
    assert!(
        !verdict(&met(1, 3, with_ttl(7, 3, 3, 0))),
        "the expiry reused the index of the version it deleted"
    );
    // An expiry of a key that is not expired is caught.
    let early = vec![
        ev(0, Call::SetTtl(0, 1, 5), Wrote(1), (0, 1)),
        ev(3, Call::Expire(0, 2), Nothing, (2, 3)),
        ev(1, Call::Get(0), Read(with_ttl(1, 1, 1, 105)), (4, 5)),
    ];
    assert!(!verdict(&early));
}

#[test]
fn hand_written_non_linearizable_histories_fail() {
    use Outcome::*;
    let not = |h: &[Event<Record>], keys: usize| {
        assert!(
            matches!(
                check(&MapModel::new(keys), h),
                Err(Rejection::NotLinearizable { .. })
            ),
            "accepted a non-linearizable history:\n{h:#?}"
        );
    };
    // A read that starts after a set returned misses it.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(1, Call::Get(0), Read(None), (2, 3)),
        ],
        1,
    );
    // A read sees a concurrent set, then a later read does not.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 9)),
            ev(1, Call::Get(0), Read(ver(1, 1, 1)), (1, 2)),
            ev(2, Call::Get(0), Read(None), (3, 4)),
        ],
        1,
    );
    // A CAS succeeds against a stale index.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Set(0, 2), Wrote(2), (2, 3)),
            ev(1, Call::SetCas(0, 3, 1), Wrote(3), (4, 5)),
        ],
        1,
    );
    // A re-create reuses an index not above the delete's.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Delete(0), Wrote(2), (2, 3)),
            ev(0, Call::SetCas(0, 1, 0), Wrote(2), (4, 5)),
        ],
        1,
    );
    // An update changes the create index.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Set(0, 2), Wrote(2), (2, 3)),
            ev(0, Call::Get(0), Read(ver(2, 2, 2)), (4, 5)),
        ],
        1,
    );
    // A failed CAS reports a current index that was never current.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(1, Call::SetCas(0, 1, 7), Conflict(ver(1, 5, 1)), (2, 3)),
        ],
        1,
    );
    // A batch seen in part: key 0 new, then key 1 old, by one reader in sequence.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Set(1, 1), Wrote(2), (2, 3)),
            ev(
                0,
                Call::Batch(vec![BatchOp::Set(0, 2), BatchOp::Set(1, 2)]),
                Wrote(3),
                (4, 11),
            ),
            ev(1, Call::Get(0), Read(ver(2, 3, 1)), (5, 6)),
            ev(1, Call::Get(1), Read(ver(1, 2, 2)), (7, 8)),
        ],
        2,
    );
    // A failed batch that reports only one of its two failing keys.
    not(
        &[ev(
            0,
            Call::Batch(vec![BatchOp::Delete(0), BatchOp::SetCas(1, 1, 5)]),
            BatchConflict(vec![(0, None)]),
            (0, 1),
        )],
        2,
    );
}

/// Checks one history; the self-tests swap in a narrower checker to show what catches a bug.
type Checker = fn(&[Event<Record>], Mode, u8) -> Result<(), String>;

/// Runs up to `rounds` rounds against a [`MutexStore`] with `bug`, returning the first
/// rejection report (or `None` if every round passed) and the number of operations checked.
fn hunt(bug: Bug, mode: Mode, rounds: usize, checker: Checker) -> (Option<String>, usize) {
    let seed = base_seed();
    let mut ops = 0;
    for round in 0..rounds {
        let w = workload(mode, round);
        let store = MutexStore::new(bug);
        let history = record(&store, &w, seed.wrapping_add(round as u64));
        ops += history.len();
        if let Err(report) = checker(&history, mode, w.keys) {
            return (Some(report), ops);
        }
    }
    (None, ops)
}

#[test]
fn a_correct_reference_store_passes() {
    for mode in [Mode::PerKey, Mode::Map] {
        let (rejected, ops) = hunt(Bug::None, mode, 60, check_round);
        if let Some(report) = rejected {
            panic!("the reference store was rejected ({mode:?}): {report}");
        }
        assert!(ops > 2000);
    }
}

/// Asserts that `checker` rejects some history of a store with `bug` within 300 rounds.
fn assert_caught(bug: Bug, mode: Mode, checker: Checker) {
    let (rejected, ops) = hunt(bug, mode, 300, checker);
    let report = rejected.unwrap_or_else(|| panic!("{bug:?} ({mode:?}) not caught in {ops} ops"));
    assert!(report.contains("not linearizable"), "{report}");
    eprintln!(
        "{bug:?} ({mode:?}) caught after {ops} ops: {}",
        report.lines().next().unwrap()
    );
}

/// The models alone, without the global uniqueness check of indices.
fn models_only(history: &[Event<Record>], mode: Mode, keys: u8) -> Result<(), String> {
    match mode {
        Mode::PerKey => check_per_key(history),
        Mode::Map => check_map(history, usize::from(keys)),
    }
}

#[test]
fn a_cas_against_a_stale_index_is_caught() {
    assert_caught(Bug::StaleCas, Mode::PerKey, models_only);
}

#[test]
fn a_stale_read_is_caught() {
    assert_caught(Bug::StaleRead, Mode::PerKey, models_only);
}

#[test]
fn a_torn_batch_is_caught() {
    assert_caught(Bug::TornBatch, Mode::Map, models_only);
}

#[test]
fn reused_indices_are_caught() {
    assert_caught(Bug::ReusedIndex, Mode::PerKey, models_only);
}

#[test]
fn reused_indices_are_also_caught_by_the_uniqueness_check() {
    let uniqueness_only: Checker = |h, _, _| check_unique_indices(h);
    let (rejected, ops) = hunt(Bug::ReusedIndex, Mode::PerKey, 300, uniqueness_only);
    let report = rejected.unwrap_or_else(|| panic!("not caught in {ops} ops"));
    assert!(report.contains("returned twice"), "{report}");
}
