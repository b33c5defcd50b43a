//! `store_concurrent`: operations from `arbitrary`, split over 2–3 threads against one real
//! [`Store`], the recorded history checked for linearizability.
//!
//! Each thread runs its own list of operations (every single-key operation, value CAS,
//! `update`, batches mixing every kind of operation with absent and repeated keys, and
//! `get_many`) over 1–4 keys. Expected indices are resolved when the call is made, against the
//! indices that thread has seen so far, so that CASes both win and lose. Every call is stamped
//! on a shared logical clock right before and right after it, as in `tests/linearizability.rs`.
//! So that calls overlap even on a busy machine, threads start together from a spinning
//! barrier, run in a lockstep window of 1, 2 or 4 operations, and spin a little (chosen by the
//! input) before each call. The history then goes through the shared checker
//! (`tests/support/lin.rs`): indices unique across the store, and a linearization against the
//! whole-map model. Once every thread is done, a `get_many` of every key closes the history and
//! a full scan (`entries`, `keys`, `len`) must agree with it.
//!
//! The interleaving is up to the scheduler, so one input explores one interleaving per run;
//! `tests/fuzz_corpus.rs` replays each corpus input many times.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arbitrary::{Arbitrary, Unstructured};
use caskv::Store;

#[path = "../../tests/support/lin.rs"]
mod lin;

use lin::{
    check_map_model, check_unique_indices, BatchOp, Call, Event, Key, MapModel, Outcome, Record,
    Target, Ver,
};

/// The most threads one input runs.
const MAX_THREADS: usize = 3;
/// The most operations one thread runs.
const MAX_OPS_PER_THREAD: usize = 12;
/// The store's bound on a batch (and on a `get_many`); inputs go one above it.
const MAX_BATCH: usize = 4;

#[derive(Arbitrary, Debug)]
struct Input {
    /// 1–4 keys: `1 + keys % 4`.
    keys: u8,
    /// The lockstep window: 1, 2 or 4 operations.
    window: u8,
    threads: Vec<Vec<Step>>,
}

/// One operation of a thread, and how long the thread spins before it (`pause % 64` spin-loop
/// hints), so that threads drift against each other and their calls overlap in many ways.
#[derive(Arbitrary, Debug, Clone)]
struct Step {
    pause: u8,
    call: FuzzCall,
}

/// A key, reduced modulo the input's key count.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct K(u8);

/// A value: 0–3, so that value CASes match often.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct V(u8);

/// Flags: 0–2.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct F(u8);

/// How a thread picks an expected index, from what it has seen of the key.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pick {
    /// The latest index this thread saw for the key (0 if none): likely current.
    Latest,
    /// 0: create-only.
    Zero,
    /// An older index this thread saw: likely stale.
    Seen(u8),
    /// An arbitrary index in 1..64.
    Other(u8),
}

#[derive(Arbitrary, Debug, Clone)]
enum FuzzCall {
    Get(K),
    PinnedGet(K),
    Set(K, V),
    SetFlags(K, V, F),
    SetCas(K, V, Pick),
    SetCasFlags(K, V, Pick, F),
    Delete(K),
    DeleteCas(K, Pick),
    Cas(K, Option<V>, Option<V>),
    Update(K, V),
    Batch(Vec<FuzzBatchOp>),
    GetMany(Vec<K>),
}

#[derive(Arbitrary, Debug, Clone)]
enum FuzzBatchOp {
    Set(K, V),
    SetFlags(K, V, F),
    SetCas(K, V, Pick),
    Delete(K),
    DeleteCas(K, Pick),
    CheckIndex(K, Pick),
    Cas(K, Option<V>, Option<V>),
}

/// What one thread has seen of each key's indices.
struct Seen {
    keys: u8,
    seen: Vec<Vec<u64>>,
}

impl Seen {
    fn new(keys: u8) -> Self {
        Seen {
            keys,
            seen: vec![Vec::new(); usize::from(keys)],
        }
    }

    fn key(&self, k: K) -> Key {
        k.0 % self.keys
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
            (Call::GetMany(keys), Outcome::ReadMany(read)) => {
                for (k, v) in keys.iter().zip(read) {
                    if let Some(v) = v {
                        self.note(*k, v.modify);
                    }
                }
            }
            (call, Outcome::Wrote(i)) => {
                if let Some(k) = call.key() {
                    self.note(k, *i);
                }
            }
            (call, Outcome::Read(Some(v)) | Outcome::Conflict(Some(v))) => {
                if let Some(k) = call.key() {
                    self.note(k, v.modify);
                }
            }
            _ => {}
        }
    }

    fn index(&self, key: Key, pick: Pick) -> u64 {
        let seen = &self.seen[usize::from(key)];
        match pick {
            Pick::Latest => seen.last().copied().unwrap_or(0),
            Pick::Zero => 0,
            Pick::Seen(i) if !seen.is_empty() => seen[usize::from(i) % seen.len()],
            Pick::Seen(i) | Pick::Other(i) => 1 + u64::from(i % 63),
        }
    }

    /// The call to make now for `fc`.
    fn resolve(&self, fc: &FuzzCall) -> Call {
        let v = |v: V| u32::from(v.0 % 4);
        let f = |f: F| u64::from(f.0 % 3);
        let ov = |o: Option<V>| o.map(v);
        match *fc {
            FuzzCall::Get(k) => Call::Get(self.key(k)),
            FuzzCall::PinnedGet(k) => Call::PinnedGet(self.key(k)),
            FuzzCall::Set(k, x) => Call::Set(self.key(k), v(x)),
            FuzzCall::SetFlags(k, x, fl) => Call::SetFlags(self.key(k), v(x), f(fl)),
            FuzzCall::SetCas(k, x, p) => {
                let k = self.key(k);
                Call::SetCas(k, v(x), self.index(k, p))
            }
            FuzzCall::SetCasFlags(k, x, p, fl) => {
                let k = self.key(k);
                Call::SetCasFlags(k, v(x), self.index(k, p), f(fl))
            }
            FuzzCall::Delete(k) => Call::Delete(self.key(k)),
            FuzzCall::DeleteCas(k, p) => {
                let k = self.key(k);
                Call::DeleteCas(k, self.index(k, p))
            }
            FuzzCall::Cas(k, e, n) => Call::Cas(self.key(k), ov(e), ov(n)),
            FuzzCall::Update(k, x) => Call::Update(self.key(k), v(x)),
            FuzzCall::Batch(ref ops) => Call::Batch(
                ops.iter()
                    .take(MAX_BATCH + 1)
                    .map(|op| match *op {
                        FuzzBatchOp::Set(k, x) => BatchOp::Set(self.key(k), v(x)),
                        FuzzBatchOp::SetFlags(k, x, fl) => {
                            BatchOp::SetFlags(self.key(k), v(x), f(fl))
                        }
                        FuzzBatchOp::SetCas(k, x, p) => {
                            let k = self.key(k);
                            BatchOp::SetCas(k, v(x), self.index(k, p))
                        }
                        FuzzBatchOp::Delete(k) => BatchOp::Delete(self.key(k)),
                        FuzzBatchOp::DeleteCas(k, p) => {
                            let k = self.key(k);
                            BatchOp::DeleteCas(k, self.index(k, p))
                        }
                        FuzzBatchOp::CheckIndex(k, p) => {
                            let k = self.key(k);
                            BatchOp::CheckIndex(k, self.index(k, p))
                        }
                        FuzzBatchOp::Cas(k, e, n) => BatchOp::Cas(self.key(k), ov(e), ov(n)),
                    })
                    .collect(),
            ),
            FuzzCall::GetMany(ref keys) => Call::GetMany(
                keys.iter()
                    .take(MAX_BATCH + 1)
                    .map(|&k| self.key(k))
                    .collect(),
            ),
        }
    }
}

/// Marks a thread done (`usize::MAX` operations) when dropped, by a return or a panic.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.store(usize::MAX, Ordering::SeqCst);
    }
}

/// Spins until `done()`, yielding now and then in case the thread it waits for is not running.
fn spin_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins += 1;
        if spins == 256 {
            spins = 0;
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Runs each thread's calls against `store` and returns the history (see the module docs).
fn record(
    store: &Store<Key, u32>,
    plans: &[Vec<Step>],
    keys: u8,
    window: usize,
) -> Vec<Event<Record>> {
    let clock = AtomicU64::new(0);
    // Threads that reached the start: they spin (not sleep) until all have, so that they are
    // all running when the first call is made.
    let ready = AtomicUsize::new(0);
    // Operations completed by each thread, for the lockstep; `usize::MAX` once it is done.
    let done: Vec<AtomicUsize> = plans.iter().map(|_| AtomicUsize::new(0)).collect();
    let per_thread: Vec<Vec<Event<Record>>> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(t, plan)| {
                let (clock, ready, done) = (&clock, &ready, &done);
                s.spawn(move || {
                    // Even if a call panics, the others must not wait for this thread forever.
                    let _finished = Finished(&done[t]);
                    let mut seen = Seen::new(keys);
                    let mut events = Vec::with_capacity(plan.len());
                    // SeqCst here and below only for simplicity: these counters order nothing
                    // the checker relies on (the clock's stamps do that).
                    ready.fetch_add(1, Ordering::SeqCst);
                    spin_until(|| ready.load(Ordering::SeqCst) == plans.len());
                    for (i, step) in plan.iter().enumerate() {
                        let call = seen.resolve(&step.call);
                        // Wait for the slowest thread to come within the window.
                        spin_until(|| {
                            done.iter()
                                .all(|d| d.load(Ordering::SeqCst).saturating_add(window) >= i)
                        });
                        for _ in 0..step.pause % 64 {
                            std::hint::spin_loop();
                        }
                        let t0 = clock.fetch_add(1, Ordering::SeqCst);
                        let outcome = store.apply(&call);
                        let t1 = clock.fetch_add(1, Ordering::SeqCst);
                        done[t].store(i + 1, Ordering::SeqCst);
                        seen.learn(&call, &outcome);
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
    let mut history: Vec<Event<Record>> = per_thread.into_iter().flatten().collect();
    // Close the history with one snapshot of every key, after every thread returned.
    let call = Call::GetMany((0..keys).collect());
    let t0 = clock.fetch_add(1, Ordering::SeqCst);
    let outcome = store.apply(&call);
    let t1 = clock.fetch_add(1, Ordering::SeqCst);
    history.push(Event {
        op: Record { call, outcome },
        call: t0,
        ret: t1,
        thread: plans.len(),
    });
    history
}

/// Runs one input once: see the module docs. Panics with the history on any violation.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    input.threads.truncate(MAX_THREADS);
    for plan in &mut input.threads {
        plan.truncate(MAX_OPS_PER_THREAD);
    }
    if input.threads.iter().all(Vec::is_empty) {
        return;
    }
    let keys = 1 + input.keys % 4;
    let window = [1, 2, 4][usize::from(input.window % 3)];
    let store: Store<Key, u32> = Store::builder().max_batch(MAX_BATCH).build();
    let history = record(&store, &input.threads, keys, window);

    if let Err(report) = check_unique_indices(&history) {
        panic!("{report}");
    }
    let model = MapModel {
        keys: usize::from(keys),
        max_batch: MAX_BATCH,
        start_ms: 0,
    };
    if let Err(report) = check_map_model(&model, &history) {
        panic!("{keys} keys, window {window}: {report}");
    }

    // Quiescent now: a full scan must show exactly the closing snapshot.
    let Some(Event {
        op: Record {
            outcome: Outcome::ReadMany(last),
            ..
        },
        ..
    }) = history.last()
    else {
        panic!("the closing get_many failed: {:?}", history.last());
    };
    let want: Vec<(Key, Ver)> = (0..keys)
        .zip(last)
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect();
    let scan: Vec<(Key, Ver)> = store
        .entries()
        .iter()
        .map(|(k, e)| (*k, Ver::of(e)))
        .collect();
    assert_eq!(scan, want, "entries() after every thread is done");
    let keys_present: Vec<Key> = want.iter().map(|(k, _)| *k).collect();
    assert_eq!(store.keys(), keys_present);
    assert_eq!(store.len(), want.len());
}
