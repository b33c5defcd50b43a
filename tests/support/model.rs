//! The sequential model of a `Store<String, u8>`: a `BTreeMap` plus a counter, and the check of
//! every operation against it. Single-threaded, every index is exactly predictable: each
//! successful write takes the next one, a failure takes none, a committed batch takes one.
//! After every step the results, the errors (kind, key, condition and the current entry they
//! hand back), a full scan with `entries()` and the global index's high-water mark must all
//! agree with the model.
//!
//! Time and the cache side too: the store reads a [`ManualClock`] that only [`Action::Advance`]
//! moves, and a [`Setup`] may give it a default TTL and an entry bound. The model keeps every
//! version the store still holds, expired ones included, with its deadline, and reads see only
//! the live ones. An expired version is deleted (at the next index, reported to the eviction
//! listener as `Expired`) by the first write that meets its key, before that write takes its
//! own index: a single-key write meets its key whatever it decides; a batch that passes its
//! shape checks meets all its keys, in key order. [`Action::Purge`] deletes every expired one.
//! Evictions cannot be predicted (the policy picks), so the model learns them from the
//! listener after each step and checks each: the key was held, the version reported is the
//! one held (value, flags, both indices, deadline), its cause fits (`Capacity` only under a
//! bound, `Expired` only once expired), and it takes the next index after the step's own. A
//! bounded store must then hold at most its bound, and its `weight` must be exactly the
//! versions the model says it still holds.
//!
//! Shared by the proptest suite (`tests/model.rs`) and the `store_model` fuzz target
//! (`fuzz/targets/store_model.rs`, which `tests/fuzz_corpus.rs` replays on stable), each of
//! which includes it with `#[path]`. Only how the [`Action`]s are generated is theirs
//! (proptest strategies, `arbitrary`); both run them through [`Model::step`]. It uses `caskv`
//! and `std` alone: the fuzz crate has no proptest.

// Each harness generates only some of the actions (proptest no `GetMany`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use caskv::{Entry, Error, Expected, ManualClock, Op, RemovalCause, Store};

/// The values: small, so that value compare-and-sets hold now and then.
pub type V = u8;

/// How the expected index of a CAS is chosen, against the model's state at that moment.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// The key's current `modify_index` (0 when absent): the condition holds.
    Current,
    /// 0: create-only.
    Zero,
    /// Near the current index (stale or from the future).
    Offset(i8),
    /// Any index at all.
    Exact(u64),
}

/// One step: a store operation with its arguments.
#[derive(Debug, Clone)]
pub enum Action {
    /// `get`, a pinned `get` and `contains_key`.
    Get(String),
    /// `set` (`set_with_flags` with flags).
    Set(String, V, Option<u64>),
    /// `set_cas` (`set_cas_with_flags` with flags).
    SetCas(String, V, Pick, Option<u64>),
    Delete(String),
    DeleteCas(String, Pick),
    /// `compare_and_set(key, expected, new)`.
    CompareAndSet(String, Option<V>, Option<V>),
    /// `update` adding this to the value (0 when absent).
    Update(String, V),
    /// One `batch` of these operations, resolved against the state before it.
    Batch(Vec<BatchAction>),
    GetMany(Vec<String>),
    /// `keys`, `len`, `is_empty` and `keys_with_prefix(prefix)`.
    Keys(&'static str),
    /// `set_with_ttl` with a TTL of this many ms (0: none).
    SetTtl(String, V, u64),
    /// `set_cas_with_ttl` with a TTL of this many ms (0: none).
    SetCasTtl(String, V, Pick, u64),
    /// Moves the clock forward this many ms.
    Advance(u64),
    /// `purge_expired`.
    Purge,
}

/// One operation of a batch.
#[derive(Debug, Clone)]
pub enum BatchAction {
    Set(String, V, Option<u64>),
    SetCas(String, V, Pick, Option<u64>),
    Delete(String),
    DeleteCas(String, Pick),
    Check(String, Pick),
    CompareAndSet(String, Option<V>, Option<V>),
}

/// What the model holds of an entry: all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub value: V,
    pub flags: u64,
    pub modify_index: u64,
    pub create_index: u64,
    /// When it expires, in ms of the clock (0: never).
    pub deadline: u64,
}

pub fn entry_of(e: &Entry<V>) -> ModelEntry {
    ModelEntry {
        value: e.value,
        flags: e.flags,
        modify_index: e.modify_index,
        create_index: e.create_index,
        deadline: e.expires_at().map_or(0, |t| {
            let since = t
                .duration_since(UNIX_EPOCH)
                .expect("a deadline after the epoch");
            u64::try_from(since.as_millis()).expect("a deadline in range")
        }),
    }
}

/// The store a model runs against.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The high-water mark its index starts after.
    pub start: u64,
    /// Its batch bound.
    pub max_batch: usize,
    /// Its entry bound (`None`: unbounded).
    pub bound: Option<u64>,
    /// Its default TTL in ms (`None` or 0: none).
    pub default_ttl: Option<u64>,
}

impl Setup {
    /// An unbounded store with no default TTL.
    pub fn plain(start: u64, max_batch: usize) -> Setup {
        Setup {
            start,
            max_batch,
            bound: None,
            default_ttl: None,
        }
    }
}

/// Where the clock starts, in ms.
const CLOCK_START: u64 = 1_000;

/// What the listener was told: key, version, cause.
type Told = Arc<Mutex<Vec<(String, Entry<V>, RemovalCause)>>>;

/// The sequential model: every version the store holds, the last index handed out, the clock,
/// and what the store's listener has told and the model has not checked yet.
pub struct Model {
    map: BTreeMap<String, ModelEntry>,
    last: u64,
    setup: Setup,
    clock: Arc<ManualClock>,
    told: Told,
    /// Expiries the step's write paths must have made, in order, before their own index.
    met: Vec<(String, ModelEntry)>,
}

impl Model {
    /// The model of an empty store set up as `setup`.
    pub fn new(setup: Setup) -> Model {
        Model {
            map: BTreeMap::new(),
            last: setup.start,
            setup,
            clock: Arc::new(ManualClock::new(CLOCK_START)),
            told: Told::default(),
            met: Vec::new(),
        }
    }

    /// The store to run against: empty, set up as the model says, reading the model's clock
    /// and telling the model of every removal it makes on its own.
    pub fn store(&self) -> Store<String, V> {
        let told = self.told.clone();
        let mut builder = Store::builder()
            .start_after(self.setup.start)
            .max_batch(self.setup.max_batch)
            .clock(self.clock.clone())
            .eviction_listener(move |k, e, cause| {
                told.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((k, e, cause));
            });
        if let Some(ms) = self.setup.default_ttl {
            builder = builder.default_ttl(Duration::from_millis(ms));
        }
        if let Some(n) = self.setup.bound {
            builder = builder.max_entries(n);
        }
        builder.build()
    }

    /// Runs step number `step` on `store` and checks it, then checks the removals the store
    /// reported, and that a full scan (indices and deadlines included), the high-water mark
    /// and a bounded store's weight agree with the model. Panics on any disagreement, naming
    /// the step.
    pub fn step(&mut self, store: &Store<String, V>, step: usize, action: Action) {
        let shown = format!("{action:?}");
        self.apply(store, action);
        self.check_removals(step, &shown);
        let scan: Vec<(String, ModelEntry)> = store
            .entries()
            .iter()
            .map(|(k, e)| (k.clone(), entry_of(e)))
            .collect();
        let now = self.now();
        let want: Vec<(String, ModelEntry)> = self
            .map
            .iter()
            .filter(|(_, e)| !expired(e, now))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        assert_eq!(scan, want, "scan after step {step} ({shown})");
        assert_eq!(
            store.global_index().high_water(),
            self.last,
            "high-water mark after step {step} ({shown})"
        );
        if let Some(bound) = self.setup.bound {
            let held = self.map.len() as u64;
            assert_eq!(
                store.weight(),
                Some(held),
                "weight after step {step} ({shown})"
            );
            assert!(
                held <= bound,
                "{held} held over a bound of {bound} after step {step}"
            );
        }
    }

    /// The clock's reading.
    fn now(&self) -> u64 {
        use caskv::Clock;
        self.clock.now_ms()
    }

    /// Checks what the listener was told during a step: first the expiries the step's write
    /// paths met (exactly, in order), then whatever the policy removed, each taking the next
    /// index.
    fn check_removals(&mut self, step: usize, shown: &str) {
        let told: Vec<_> =
            std::mem::take(&mut *self.told.lock().unwrap_or_else(|e| e.into_inner()));
        let met = std::mem::take(&mut self.met);
        assert!(
            told.len() >= met.len(),
            "step {step} ({shown}): told {told:?}, but met {met:?}"
        );
        let now = self.now();
        for (i, (key, entry, cause)) in told.into_iter().enumerate() {
            let got = entry_of(&entry);
            if let Some((met_key, met_entry)) = met.get(i) {
                assert_eq!(
                    (&key, &got, cause),
                    (met_key, met_entry, RemovalCause::Expired),
                    "step {step} ({shown}): expiry {i}"
                );
                continue;
            }
            let held = self.map.remove(&key);
            assert_eq!(
                held.as_ref(),
                Some(&got),
                "step {step} ({shown}): {cause:?} of {key:?}"
            );
            match cause {
                RemovalCause::Capacity => assert!(
                    self.setup.bound.is_some(),
                    "step {step} ({shown}): an eviction from an unbounded store"
                ),
                RemovalCause::Expired => assert!(
                    expired(&got, now),
                    "step {step} ({shown}): {key:?} reported expired at {now}"
                ),
                _ => panic!("step {step} ({shown}): an unknown cause {cause:?}"),
            }
            self.next();
        }
    }

    /// The write paths of this step meet `key`: if its version has expired, it is deleted
    /// first, at the next index.
    fn meet(&mut self, key: &str) {
        let now = self.now();
        if self.map.get(key).is_some_and(|e| expired(e, now)) {
            let entry = self.map.remove(key).expect("just seen");
            self.next();
            self.met.push((key.to_string(), entry));
        }
    }

    /// The deadline of a write with `ttl` ms (`None`: the default).
    fn deadline(&self, ttl: Option<u64>) -> u64 {
        match ttl.or(self.setup.default_ttl) {
            None | Some(0) => 0,
            Some(ms) => self.now() + ms,
        }
    }

    /// The next index: one above the last (a run starts below 2^63 and makes at most a few
    /// hundred writes, so this never overflows).
    fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    /// What a read of `key` sees: its version, unless expired.
    fn current(&self, key: &str) -> Option<&ModelEntry> {
        let now = self.now();
        self.map.get(key).filter(|e| !expired(e, now))
    }

    fn current_index(&self, key: &str) -> u64 {
        self.current(key).map_or(0, |e| e.modify_index)
    }

    fn resolve(&self, pick: Pick, key: &str) -> u64 {
        match pick {
            Pick::Current => self.current_index(key),
            Pick::Zero => 0,
            Pick::Offset(d) => self.current_index(key).wrapping_add_signed(i64::from(d)),
            Pick::Exact(n) => n,
        }
    }

    /// Writes `key` at `index` (after its expired version, if any, was met).
    fn write(&mut self, key: &str, value: V, flags: Option<u64>, index: u64, deadline: u64) {
        let (create, kept) = match self.current(key) {
            Some(e) => (e.create_index, e.flags),
            None => (index, 0),
        };
        self.map.insert(
            key.to_string(),
            ModelEntry {
                value,
                flags: flags.unwrap_or(kept),
                modify_index: index,
                create_index: create,
                deadline,
            },
        );
    }

    /// The index condition: 0 means absent, N means present at `modify_index` N.
    fn index_ok(&self, key: &str, expected: u64) -> bool {
        match self.current(key) {
            None => expected == 0,
            Some(e) => expected != 0 && e.modify_index == expected,
        }
    }

    fn value_ok(&self, key: &str, expected: Option<V>) -> bool {
        self.current(key).map(|e| e.value) == expected
    }

    /// The error a failed index condition must be: not found for an absent key (N ≥ 1), else a
    /// conflict naming `Expected::Index(expected)` and the current entry.
    fn assert_index_failure(&self, err: &Error<String, V>, key: &str, expected: u64) {
        match (err, self.current(key)) {
            (Error::NotFound(k), None) if expected != 0 => assert_eq!(k, key),
            (Error::Conflict(c), current) => {
                assert_eq!(c.key, key);
                assert_eq!(c.expected, Expected::Index(expected));
                assert_eq!(c.current.as_ref().map(entry_of).as_ref(), current);
            }
            (err, current) => {
                panic!("{key}: expected index {expected} failed with {err:?}; model {current:?}")
            }
        }
    }

    fn apply(&mut self, store: &Store<String, V>, action: Action) {
        match action {
            Action::Get(k) => {
                let want = self.current(&k);
                assert_eq!(store.get(&k).as_ref().map(entry_of).as_ref(), want);
                let pinned = store.pin();
                let got = pinned.get(&k).map(|e| entry_of(&e.to_entry()));
                assert_eq!(got.as_ref(), want);
                assert_eq!(store.contains_key(&k), want.is_some());
            }
            Action::Set(k, v, flags) => {
                self.meet(&k);
                let got = match flags {
                    Some(f) => store.set_with_flags(k.clone(), v, f),
                    None => store.set(k.clone(), v),
                };
                let want = self.next();
                assert_eq!(got, want, "set {k}");
                self.write(&k, v, flags, want, self.deadline(None));
            }
            Action::SetTtl(k, v, ttl) => {
                self.meet(&k);
                let got = store.set_with_ttl(k.clone(), v, Duration::from_millis(ttl));
                let want = self.next();
                assert_eq!(got, want, "set_with_ttl {k}");
                self.write(&k, v, None, want, self.deadline(Some(ttl)));
            }
            Action::SetCas(k, v, pick, flags) => {
                self.meet(&k);
                let expected = self.resolve(pick, &k);
                let got = match flags {
                    Some(f) => store.set_cas_with_flags(k.clone(), v, expected, f),
                    None => store.set_cas(k.clone(), v, expected),
                };
                if self.index_ok(&k, expected) {
                    let want = self.next();
                    assert_eq!(got.unwrap(), want, "set_cas {k} at {expected}");
                    self.write(&k, v, flags, want, self.deadline(None));
                } else {
                    self.assert_index_failure(&got.unwrap_err(), &k, expected);
                }
            }
            Action::SetCasTtl(k, v, pick, ttl) => {
                self.meet(&k);
                let expected = self.resolve(pick, &k);
                let got =
                    store.set_cas_with_ttl(k.clone(), v, expected, Duration::from_millis(ttl));
                if self.index_ok(&k, expected) {
                    let want = self.next();
                    assert_eq!(got.unwrap(), want, "set_cas_with_ttl {k} at {expected}");
                    self.write(&k, v, None, want, self.deadline(Some(ttl)));
                } else {
                    self.assert_index_failure(&got.unwrap_err(), &k, expected);
                }
            }
            Action::Advance(ms) => self.clock.advance(Duration::from_millis(ms)),
            Action::Purge => {
                let now = self.now();
                let due = self.map.values().filter(|e| expired(e, now)).count();
                // Each is reported to the listener and checked (and given its index) by
                // `check_removals`.
                assert_eq!(store.purge_expired(), due, "purge_expired");
            }
            Action::Delete(k) => {
                self.meet(&k);
                match (store.delete(&k), self.map.contains_key(&k)) {
                    (Ok(i), true) => {
                        assert_eq!(i, self.next(), "delete {k}");
                        self.map.remove(&k);
                    }
                    (Err(Error::NotFound(key)), false) => assert_eq!(key, k),
                    (got, present) => panic!("delete {k}: {got:?}, model present: {present}"),
                }
            }
            Action::DeleteCas(k, pick) => {
                let expected = self.resolve(pick, &k);
                if expected != 0 {
                    self.meet(&k); // a create-only delete is refused before it looks
                }
                let got = store.delete_cas(&k, expected);
                if expected == 0 {
                    assert!(
                        matches!(&got, Err(Error::CreateOnlyDelete(key)) if *key == k),
                        "delete_cas {k} at 0: {got:?}"
                    );
                } else if self.index_ok(&k, expected) {
                    assert_eq!(got.unwrap(), self.next(), "delete_cas {k} at {expected}");
                    self.map.remove(&k);
                } else {
                    self.assert_index_failure(&got.unwrap_err(), &k, expected);
                }
            }
            Action::CompareAndSet(k, expected, new) => {
                self.meet(&k);
                let got = store.compare_and_set(k.clone(), expected.as_ref(), new);
                if self.value_ok(&k, expected) {
                    let present = self.map.contains_key(&k);
                    match new {
                        Some(v) => {
                            let want = self.next();
                            assert_eq!(got.unwrap(), Some(want), "compare_and_set {k}");
                            self.write(&k, v, None, want, self.deadline(None));
                        }
                        None if present => {
                            assert_eq!(got.unwrap(), Some(self.next()), "compare_and_set {k}");
                            self.map.remove(&k);
                        }
                        None => assert_eq!(got.unwrap(), None, "compare_and_set {k}"),
                    }
                } else {
                    match got {
                        Err(Error::Conflict(c)) => {
                            assert_eq!(c.key, k);
                            let kind = match expected {
                                Some(_) => Expected::Value,
                                None => Expected::Absent,
                            };
                            assert_eq!(c.expected, kind);
                            assert_eq!(c.current.as_ref().map(entry_of).as_ref(), self.current(&k));
                        }
                        other => panic!(
                            "compare_and_set {k}: {other:?}, model {:?}",
                            self.current(&k)
                        ),
                    }
                }
            }
            Action::Update(k, add) => {
                self.meet(&k);
                let old = self.current(&k).map(|e| e.value);
                let mut calls = 0;
                let got = store.update(k.clone(), |v| {
                    calls += 1;
                    assert_eq!(v.copied(), old, "update {k} saw the wrong value");
                    v.copied().unwrap_or(0).wrapping_add(add)
                });
                // Alone, the first attempt always wins.
                assert_eq!(calls, 1, "update {k} ran its closure {calls} times");
                let want = self.next();
                assert_eq!(got.unwrap(), want, "update {k}");
                let value = old.unwrap_or(0).wrapping_add(add);
                self.write(&k, value, None, want, self.deadline(None));
            }
            Action::Batch(actions) => self.apply_batch(store, actions),
            Action::GetMany(keys) => {
                let got = store.get_many(&keys);
                if keys.len() > self.setup.max_batch {
                    assert!(
                        matches!(got, Err(Error::BatchTooLarge { len, max }) if len == keys.len() && max == self.setup.max_batch),
                        "get_many {keys:?}: {got:?}"
                    );
                    return;
                }
                let got: Vec<Option<ModelEntry>> = got
                    .unwrap()
                    .iter()
                    .map(|e| e.as_ref().map(entry_of))
                    .collect();
                let want: Vec<Option<ModelEntry>> =
                    keys.iter().map(|k| self.current(k).cloned()).collect();
                assert_eq!(got, want, "get_many {keys:?}");
            }
            Action::Keys(prefix) => {
                let now = self.now();
                let all: Vec<String> = self
                    .map
                    .iter()
                    .filter(|(_, e)| !expired(e, now))
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(store.keys(), all);
                let with: Vec<String> = all
                    .iter()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect();
                assert_eq!(store.keys_with_prefix(prefix), with, "prefix {prefix:?}");
                assert_eq!(store.len(), all.len());
                assert_eq!(store.is_empty(), all.is_empty());
            }
        }
    }

    fn plan(&self, action: BatchAction) -> Planned {
        let with_flags = |op: Op<String, V>, flags: Option<u64>| match flags {
            Some(f) => op.with_flags(f),
            None => op,
        };
        match action {
            BatchAction::Set(key, v, flags) => Planned {
                op: with_flags(Op::set(key, v), flags),
                condition: None,
                holds: true,
            },
            BatchAction::SetCas(key, v, pick, flags) => {
                self.plan_indexed(key, pick, |k, e| with_flags(Op::set_cas(k, v, e), flags))
            }
            BatchAction::Delete(key) => Planned {
                holds: self.current(&key).is_some(),
                op: Op::delete(key),
                condition: Some(Expected::Present),
            },
            BatchAction::DeleteCas(key, pick) => self.plan_indexed(key, pick, Op::delete_cas),
            BatchAction::Check(key, pick) => self.plan_indexed(key, pick, Op::check_index),
            BatchAction::CompareAndSet(key, expected, new) => Planned {
                holds: self.value_ok(&key, expected),
                condition: Some(match expected {
                    Some(_) => Expected::Value,
                    None => Expected::Absent,
                }),
                op: Op::compare_and_set(key, expected, new),
            },
        }
    }

    /// A batch operation under an index condition: `op(key, expected)`, with `pick` resolved.
    fn plan_indexed(
        &self,
        key: String,
        pick: Pick,
        op: impl FnOnce(String, u64) -> Op<String, V>,
    ) -> Planned {
        let expected = self.resolve(pick, &key);
        Planned {
            holds: self.index_ok(&key, expected),
            condition: Some(Expected::Index(expected)),
            op: op(key, expected),
        }
    }

    fn apply_batch(&mut self, store: &Store<String, V>, actions: Vec<BatchAction>) {
        let planned: Vec<Planned> = actions.into_iter().map(|a| self.plan(a)).collect();
        let got = store.batch(planned.iter().map(|p| p.op.clone()).collect());

        // The model's verdict, in the order the store checks: shape first, then conditions.
        if planned.is_empty() {
            assert!(
                matches!(got, Err(Error::EmptyBatch)),
                "empty batch: {got:?}"
            );
            return;
        }
        if planned.len() > self.setup.max_batch {
            assert!(
                matches!(got, Err(Error::BatchTooLarge { len, max }) if len == planned.len() && max == self.setup.max_batch),
                "batch of {}: {got:?}",
                planned.len()
            );
            return;
        }
        let mut keys: Vec<&String> = planned.iter().map(|p| p.op.key()).collect();
        keys.sort();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            assert!(
                matches!(&got, Err(Error::DuplicateKey(k)) if k == w[0]),
                "duplicate {}: {got:?}",
                w[0]
            );
            return;
        }
        let create_only = planned
            .iter()
            .filter(|p| matches!(p.op, Op::DeleteCas { expected: 0, .. }))
            .map(|p| p.op.key())
            .min();
        if let Some(key) = create_only {
            assert!(
                matches!(&got, Err(Error::CreateOnlyDelete(k)) if k == key),
                "delete_cas {key} at 0 in a batch: {got:?}"
            );
            return;
        }
        // It locks its keys, in key order, meeting each.
        for key in keys.iter().map(|k| k.to_string()).collect::<Vec<_>>() {
            self.meet(&key);
        }
        let mut failing: Vec<&Planned> = planned.iter().filter(|p| !p.holds).collect();
        failing.sort_by(|a, b| a.op.key().cmp(b.op.key()));
        if !failing.is_empty() {
            let err = match got {
                Err(e @ Error::BatchConflict(_)) => e,
                other => panic!("batch with failing conditions: {other:?}"),
            };
            let reported = err.conflicts();
            assert_eq!(
                reported.iter().map(|c| &c.key).collect::<Vec<_>>(),
                failing.iter().map(|p| p.op.key()).collect::<Vec<_>>(),
                "failing keys"
            );
            for (c, p) in reported.iter().zip(&failing) {
                assert_eq!(Some(c.expected), p.condition, "condition of {}", c.key);
                assert_eq!(
                    c.current.as_ref().map(entry_of).as_ref(),
                    self.current(&c.key),
                    "current entry of {}",
                    c.key
                );
            }
            return;
        }
        let index = self.next();
        assert_eq!(got.unwrap(), index, "batch index");
        let deadline = self.deadline(None);
        for p in planned {
            match p.op {
                Op::Set { key, value, flags }
                | Op::SetCas {
                    key, value, flags, ..
                } => self.write(&key, value, flags, index, deadline),
                Op::Delete { key } | Op::DeleteCas { key, .. } => {
                    self.map.remove(&key);
                }
                Op::CompareAndSet { key, new, .. } => match new {
                    Some(v) => self.write(&key, v, None, index, deadline),
                    None => {
                        self.map.remove(&key);
                    }
                },
                Op::CheckIndex { .. } => {}
                _ => unreachable!("the model builds only these"),
            }
        }
    }
}

/// What the model expects of one batch operation, resolved against the state before the batch.
struct Planned {
    op: Op<String, V>,
    /// `None` when it always holds, else the condition a failure must name.
    condition: Option<Expected>,
    holds: bool,
}

/// Whether `e` has expired at `now` (ms).
fn expired(e: &ModelEntry, now: u64) -> bool {
    e.deadline != 0 && now >= e.deadline
}
