//! `store_model`: the store against a sequential model, driven by `arbitrary`.
//!
//! A sequence of operations (every single-key operation, value compare-and-set, `update`,
//! batches mixing every kind of operation, with keys absent, present or named twice, and
//! `get_many`) runs against a [`Store`] and against a model: a `BTreeMap` plus a counter.
//! Single-threaded, every index is exactly predictable: each successful write takes the next
//! one, a failure takes none, a committed batch takes one. After every step the results, the
//! errors (kind, key, condition and the current entry they hand back), a full scan with
//! `entries()` and the global index's high-water mark must all agree with the model.
//!
//! The store may start above a high-water mark, up to the highest one allowed
//! (`GlobalIndex::LIMIT - 1`): indices must go on increasing past it without wrapping. A mark at
//! or above the limit must be refused by `GlobalIndex::try_starting_after`.
//!
//! `tests/model.rs` is the proptest version; this one lets coverage guide the search.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use caskv::{Entry, Error, Expected, GlobalIndex, Op, Store};

type V = u8;

/// The keys operations pick from: few, so that operations meet on the same keys, and with a
/// shared prefix and the empty key (valid for the library).
const KEYS: [&str; 7] = ["a", "b", "c", "d", "d/1", "d/2", ""];

/// The prefixes `keys_with_prefix` is asked for.
const PREFIXES: [&str; 5] = ["", "d", "d/", "a", "x"];

/// The most actions one input runs.
const MAX_ACTIONS: usize = 64;

/// A key, by position in [`KEYS`].
#[derive(Arbitrary, Debug, Clone, Copy)]
struct K(u8);

impl K {
    fn name(self) -> String {
        KEYS[usize::from(self.0) % KEYS.len()].to_string()
    }
}

/// How the expected index of a CAS is chosen.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pick {
    /// The key's current `modify_index` (0 when absent): the condition holds.
    Current,
    /// 0: create-only.
    Zero,
    /// Near the current index (stale or from the future).
    Offset(i8),
    /// Any index at all.
    Exact(u64),
}

/// Where the store's global index starts.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Start {
    Fresh,
    After(u16),
    /// `GlobalIndex::LIMIT + n` (saturating): refused, and the store starts fresh.
    Refused(u64),
    /// `GlobalIndex::LIMIT - 1 - n`: writes run past the limit (they must not wrap).
    NearLimit(u8),
}

#[derive(Arbitrary, Debug)]
enum Action {
    Get(K),
    Set(K, V, Option<u64>),
    SetCas(K, V, Pick, Option<u64>),
    Delete(K),
    DeleteCas(K, Pick),
    CompareAndSet(K, Option<V>, Option<V>),
    Update(K, V),
    Batch(Vec<BatchAction>),
    GetMany(Vec<K>),
    Keys(u8),
}

#[derive(Arbitrary, Debug)]
enum BatchAction {
    Set(K, V, Option<u64>),
    SetCas(K, V, Pick, Option<u64>),
    Delete(K),
    DeleteCas(K, Pick),
    Check(K, Pick),
    CompareAndSet(K, Option<V>, Option<V>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: Start,
    /// `max_batch` is `1 + max_batch % 6`.
    max_batch: u8,
    actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelEntry {
    value: V,
    flags: u64,
    modify_index: u64,
    create_index: u64,
}

fn entry_of(e: &Entry<V>) -> ModelEntry {
    ModelEntry {
        value: e.value,
        flags: e.flags,
        modify_index: e.modify_index,
        create_index: e.create_index,
    }
}

/// The sequential model: the map, the last index handed out, and the store's batch bound.
struct Model {
    map: BTreeMap<String, ModelEntry>,
    last: u64,
    max_batch: usize,
}

impl Model {
    /// The next index: one above the last (a run starts below 2^63 and makes at most a few
    /// hundred writes, so this never overflows).
    fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    fn current(&self, key: &str) -> Option<&ModelEntry> {
        self.map.get(key)
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

    fn write(&mut self, key: &str, value: V, flags: Option<u64>, index: u64) {
        let (create, kept) = match self.map.get(key) {
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
            },
        );
    }

    /// The index condition: 0 means absent, N means present at `modify_index` N.
    fn index_ok(&self, key: &str, expected: u64) -> bool {
        match self.map.get(key) {
            None => expected == 0,
            Some(e) => expected != 0 && e.modify_index == expected,
        }
    }

    fn value_ok(&self, key: &str, expected: Option<V>) -> bool {
        self.map.get(key).map(|e| e.value) == expected
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
}

/// Replays one input: see the module docs. Panics on any disagreement.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    input.actions.truncate(MAX_ACTIONS);
    let start = match input.start {
        Start::Fresh => 0,
        Start::After(n) => u64::from(n),
        Start::Refused(n) => {
            let high = GlobalIndex::LIMIT.saturating_add(n);
            assert!(
                GlobalIndex::try_starting_after(high).is_none(),
                "a high-water mark of {high} was accepted"
            );
            0
        }
        Start::NearLimit(n) => GlobalIndex::LIMIT - 1 - u64::from(n),
    };
    let max_batch = 1 + usize::from(input.max_batch % 6);
    let store: Store<String, V> = Store::builder()
        .start_after(start)
        .max_batch(max_batch)
        .build();
    let mut model = Model {
        map: BTreeMap::new(),
        last: start,
        max_batch,
    };
    for (step, action) in input.actions.into_iter().enumerate() {
        let shown = format!("{action:?}");
        apply(&store, &mut model, action);
        // After every step a full scan agrees, indices included, and so does the counter.
        let scan: Vec<(String, ModelEntry)> = store
            .entries()
            .iter()
            .map(|(k, e)| (k.clone(), entry_of(e)))
            .collect();
        let want: Vec<(String, ModelEntry)> = model
            .map
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        assert_eq!(scan, want, "scan after step {step} ({shown})");
        assert_eq!(
            store.global_index().high_water(),
            model.last,
            "high-water mark after step {step} ({shown})"
        );
    }
}

fn apply(store: &Store<String, V>, model: &mut Model, action: Action) {
    match action {
        Action::Get(k) => {
            let k = k.name();
            let want = model.current(&k);
            assert_eq!(store.get(&k).as_ref().map(entry_of).as_ref(), want);
            let pinned = store.pin();
            let got = pinned.get(&k).map(|e| entry_of(&e.to_entry()));
            assert_eq!(got.as_ref(), want);
            assert_eq!(store.contains_key(&k), want.is_some());
        }
        Action::Set(k, v, flags) => {
            let k = k.name();
            let got = match flags {
                Some(f) => store.set_with_flags(k.clone(), v, f),
                None => store.set(k.clone(), v),
            };
            let want = model.next();
            assert_eq!(got, want, "set {k}");
            model.write(&k, v, flags, want);
        }
        Action::SetCas(k, v, pick, flags) => {
            let k = k.name();
            let expected = model.resolve(pick, &k);
            let got = match flags {
                Some(f) => store.set_cas_with_flags(k.clone(), v, expected, f),
                None => store.set_cas(k.clone(), v, expected),
            };
            if model.index_ok(&k, expected) {
                let want = model.next();
                assert_eq!(got.unwrap(), want, "set_cas {k} at {expected}");
                model.write(&k, v, flags, want);
            } else {
                model.assert_index_failure(&got.unwrap_err(), &k, expected);
            }
        }
        Action::Delete(k) => {
            let k = k.name();
            match (store.delete(&k), model.map.contains_key(&k)) {
                (Ok(i), true) => {
                    assert_eq!(i, model.next(), "delete {k}");
                    model.map.remove(&k);
                }
                (Err(Error::NotFound(key)), false) => assert_eq!(key, k),
                (got, present) => panic!("delete {k}: {got:?}, model present: {present}"),
            }
        }
        Action::DeleteCas(k, pick) => {
            let k = k.name();
            let expected = model.resolve(pick, &k);
            let got = store.delete_cas(&k, expected);
            if expected == 0 {
                assert!(
                    matches!(&got, Err(Error::CreateOnlyDelete(key)) if *key == k),
                    "delete_cas {k} at 0: {got:?}"
                );
            } else if model.index_ok(&k, expected) {
                assert_eq!(got.unwrap(), model.next(), "delete_cas {k} at {expected}");
                model.map.remove(&k);
            } else {
                model.assert_index_failure(&got.unwrap_err(), &k, expected);
            }
        }
        Action::CompareAndSet(k, expected, new) => {
            let k = k.name();
            let got = store.compare_and_set(k.clone(), expected.as_ref(), new);
            if model.value_ok(&k, expected) {
                let present = model.map.contains_key(&k);
                match new {
                    Some(v) => {
                        let want = model.next();
                        assert_eq!(got.unwrap(), Some(want), "compare_and_set {k}");
                        model.write(&k, v, None, want);
                    }
                    None if present => {
                        assert_eq!(got.unwrap(), Some(model.next()), "compare_and_set {k}");
                        model.map.remove(&k);
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
                        assert_eq!(c.current.as_ref().map(entry_of).as_ref(), model.current(&k));
                    }
                    other => panic!(
                        "compare_and_set {k}: {other:?}, model {:?}",
                        model.current(&k)
                    ),
                }
            }
        }
        Action::Update(k, add) => {
            let k = k.name();
            let old = model.current(&k).map(|e| e.value);
            let mut calls = 0;
            let got = store.update(k.clone(), |v| {
                calls += 1;
                assert_eq!(v.copied(), old, "update {k} saw the wrong value");
                v.copied().unwrap_or(0).wrapping_add(add)
            });
            // Alone, the first attempt always wins.
            assert_eq!(calls, 1, "update {k} ran its closure {calls} times");
            let want = model.next();
            assert_eq!(got.unwrap(), want, "update {k}");
            model.write(&k, old.unwrap_or(0).wrapping_add(add), None, want);
        }
        Action::Batch(mut actions) => {
            // Enough to exceed `max_batch` by one, no more.
            actions.truncate(model.max_batch + 1);
            apply_batch(store, model, actions);
        }
        Action::GetMany(mut keys) => {
            keys.truncate(model.max_batch + 1);
            let keys: Vec<String> = keys.into_iter().map(K::name).collect();
            let got = store.get_many(&keys);
            if keys.len() > model.max_batch {
                assert!(
                    matches!(got, Err(Error::BatchTooLarge { len, max }) if len == keys.len() && max == model.max_batch),
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
                keys.iter().map(|k| model.current(k).cloned()).collect();
            assert_eq!(got, want, "get_many {keys:?}");
        }
        Action::Keys(p) => {
            let prefix = PREFIXES[usize::from(p) % PREFIXES.len()];
            let all: Vec<String> = model.map.keys().cloned().collect();
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

/// What the model expects of one batch operation, resolved against the state before the batch.
struct Planned {
    op: Op<String, V>,
    /// `None` when it always holds, else the condition a failure must name.
    condition: Option<Expected>,
    holds: bool,
}

fn plan(model: &Model, action: BatchAction) -> Planned {
    let with_flags = |op: Op<String, V>, flags: Option<u64>| match flags {
        Some(f) => op.with_flags(f),
        None => op,
    };
    match action {
        BatchAction::Set(k, v, flags) => Planned {
            op: with_flags(Op::set(k.name(), v), flags),
            condition: None,
            holds: true,
        },
        BatchAction::SetCas(k, v, pick, flags) => {
            let key = k.name();
            let e = model.resolve(pick, &key);
            Planned {
                holds: model.index_ok(&key, e),
                op: with_flags(Op::set_cas(key, v, e), flags),
                condition: Some(Expected::Index(e)),
            }
        }
        BatchAction::Delete(k) => {
            let key = k.name();
            Planned {
                holds: model.map.contains_key(&key),
                op: Op::delete(key),
                condition: Some(Expected::Present),
            }
        }
        BatchAction::DeleteCas(k, pick) => {
            let key = k.name();
            let e = model.resolve(pick, &key);
            Planned {
                holds: model.index_ok(&key, e),
                op: Op::delete_cas(key, e),
                condition: Some(Expected::Index(e)),
            }
        }
        BatchAction::Check(k, pick) => {
            let key = k.name();
            let e = model.resolve(pick, &key);
            Planned {
                holds: model.index_ok(&key, e),
                op: Op::check_index(key, e),
                condition: Some(Expected::Index(e)),
            }
        }
        BatchAction::CompareAndSet(k, expected, new) => {
            let key = k.name();
            Planned {
                holds: model.value_ok(&key, expected),
                condition: Some(match expected {
                    Some(_) => Expected::Value,
                    None => Expected::Absent,
                }),
                op: Op::compare_and_set(key, expected, new),
            }
        }
    }
}

fn apply_batch(store: &Store<String, V>, model: &mut Model, actions: Vec<BatchAction>) {
    let planned: Vec<Planned> = actions.into_iter().map(|a| plan(model, a)).collect();
    let got = store.batch(planned.iter().map(|p| p.op.clone()).collect());

    // The model's verdict, in the order the store checks: shape first, then conditions.
    if planned.is_empty() {
        assert!(
            matches!(got, Err(Error::EmptyBatch)),
            "empty batch: {got:?}"
        );
        return;
    }
    if planned.len() > model.max_batch {
        assert!(
            matches!(got, Err(Error::BatchTooLarge { len, max }) if len == planned.len() && max == model.max_batch),
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
                model.current(&c.key),
                "current entry of {}",
                c.key
            );
        }
        return;
    }
    let index = model.next();
    assert_eq!(got.unwrap(), index, "batch index");
    for p in planned {
        match p.op {
            Op::Set { key, value, flags }
            | Op::SetCas {
                key, value, flags, ..
            } => model.write(&key, value, flags, index),
            Op::Delete { key } | Op::DeleteCas { key, .. } => {
                model.map.remove(&key);
            }
            Op::CompareAndSet { key, new, .. } => match new {
                Some(v) => model.write(&key, v, None, index),
                None => {
                    model.map.remove(&key);
                }
            },
            // A check, or an operation this harness never builds.
            _ => {}
        }
    }
}
