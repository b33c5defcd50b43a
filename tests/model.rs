//! Property test: the store against a sequential model (a `BTreeMap` plus a counter), over
//! random sequences of every operation, batches included. Run single-threaded, every index is
//! predictable: each successful write takes exactly the next one, and failures take none.

use std::collections::BTreeMap;

use caskv::{Error, Expected, Op, Store};
use proptest::prelude::*;

type K = String;
type V = u8;

#[derive(Debug, Clone, PartialEq)]
struct ModelEntry {
    value: V,
    flags: u64,
    modify_index: u64,
    create_index: u64,
}

#[derive(Default, Debug)]
struct Model {
    map: BTreeMap<K, ModelEntry>,
    last: u64,
}

#[derive(Debug, Clone)]
enum Action {
    Get(K),
    Set(K, V, Option<u64>),
    SetCas(K, V, IndexPick, Option<u64>),
    Delete(K),
    DeleteCas(K, IndexPick),
    CompareAndSet(K, Option<V>, Option<V>),
    Update(K, V),
    Batch(Vec<BatchAction>),
    Keys,
}

#[derive(Debug, Clone)]
enum BatchAction {
    Set(K, V, Option<u64>),
    SetCas(K, V, IndexPick),
    Delete(K),
    DeleteCas(K, IndexPick),
    Check(K, IndexPick),
    CompareAndSet(K, Option<V>, Option<V>),
}

/// How a test picks the expected index: the key's current one (likely to succeed), 0, or an
/// arbitrary one (usually stale or unknown).
#[derive(Debug, Clone, Copy)]
enum IndexPick {
    Current,
    Zero,
    Other(u64),
}

impl IndexPick {
    fn resolve(self, model: &Model, key: &str) -> u64 {
        match self {
            IndexPick::Current => model.map.get(key).map_or(0, |e| e.modify_index),
            IndexPick::Zero => 0,
            IndexPick::Other(n) => n,
        }
    }
}

fn key() -> impl Strategy<Value = K> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("d/1"), Just("d/2")].prop_map(String::from)
}

fn pick() -> impl Strategy<Value = IndexPick> {
    prop_oneof![
        4 => Just(IndexPick::Current),
        1 => Just(IndexPick::Zero),
        1 => (1u64..40).prop_map(IndexPick::Other),
    ]
}

fn batch_action() -> impl Strategy<Value = BatchAction> {
    prop_oneof![
        (key(), any::<V>(), proptest::option::of(0u64..4))
            .prop_map(|(k, v, f)| BatchAction::Set(k, v, f)),
        (key(), any::<V>(), pick()).prop_map(|(k, v, p)| BatchAction::SetCas(k, v, p)),
        key().prop_map(BatchAction::Delete),
        (key(), pick()).prop_map(|(k, p)| BatchAction::DeleteCas(k, p)),
        (key(), pick()).prop_map(|(k, p)| BatchAction::Check(k, p)),
        (
            key(),
            proptest::option::of(0u8..3),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(k, e, n)| BatchAction::CompareAndSet(k, e, n)),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        key().prop_map(Action::Get),
        (key(), 0u8..3, proptest::option::of(0u64..4)).prop_map(|(k, v, f)| Action::Set(k, v, f)),
        (key(), 0u8..3, pick(), proptest::option::of(0u64..4))
            .prop_map(|(k, v, p, f)| Action::SetCas(k, v, p, f)),
        key().prop_map(Action::Delete),
        (key(), pick()).prop_map(|(k, p)| Action::DeleteCas(k, p)),
        (
            key(),
            proptest::option::of(0u8..3),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(k, e, n)| Action::CompareAndSet(k, e, n)),
        (key(), any::<V>()).prop_map(|(k, v)| Action::Update(k, v)),
        proptest::collection::vec(batch_action(), 0..7).prop_map(Action::Batch),
        Just(Action::Keys),
    ]
}

fn entry_of(e: &caskv::Entry<V>) -> ModelEntry {
    ModelEntry {
        value: e.value,
        flags: e.flags,
        modify_index: e.modify_index,
        create_index: e.create_index,
    }
}

impl Model {
    fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
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

    fn index_ok(&self, key: &str, expected: u64) -> bool {
        match self.map.get(key) {
            None => expected == 0,
            Some(e) => expected != 0 && e.modify_index == expected,
        }
    }

    fn value_ok(&self, key: &str, expected: Option<V>) -> bool {
        self.map.get(key).map(|e| e.value) == expected
    }
}

/// Checks a single-key failure against the model: a conflict that names the current entry, or
/// a not-found for an absent key.
fn assert_failure(err: &Error<K, V>, model: &Model, key: &str) {
    let current = model.map.get(key);
    match err {
        Error::NotFound(k) => {
            assert_eq!(k, key);
            assert!(
                current.is_none(),
                "not found, but the model has {current:?}"
            );
        }
        Error::Conflict(c) => {
            assert_eq!(c.key, key);
            assert_eq!(c.current.as_ref().map(entry_of).as_ref(), current);
        }
        other => panic!("unexpected error {other:?}"),
    }
}

fn apply(store: &Store<K, V>, model: &mut Model, action: Action) {
    match action {
        Action::Get(k) => {
            assert_eq!(
                store.get(&k).as_ref().map(entry_of).as_ref(),
                model.map.get(&k)
            );
            assert_eq!(
                store
                    .pin()
                    .get(&k)
                    .map(|e| e.to_entry())
                    .as_ref()
                    .map(entry_of)
                    .as_ref(),
                model.map.get(&k)
            );
        }
        Action::Set(k, v, flags) => {
            let got = match flags {
                Some(f) => store.set_with_flags(k.clone(), v, f),
                None => store.set(k.clone(), v),
            };
            let want = model.next();
            assert_eq!(got, want);
            model.write(&k, v, flags, want);
        }
        Action::SetCas(k, v, p, flags) => {
            let expected = p.resolve(model, &k);
            let got = match flags {
                Some(f) => store.set_cas_with_flags(k.clone(), v, expected, f),
                None => store.set_cas(k.clone(), v, expected),
            };
            if model.index_ok(&k, expected) {
                let want = model.next();
                assert_eq!(got.unwrap(), want);
                model.write(&k, v, flags, want);
            } else {
                let err = got.unwrap_err();
                assert_failure(&err, model, &k);
                if let Error::Conflict(c) = &err {
                    assert_eq!(c.expected, Expected::Index(expected));
                }
            }
        }
        Action::Delete(k) => match (store.delete(&k), model.map.contains_key(&k)) {
            (Ok(i), true) => {
                assert_eq!(i, model.next());
                model.map.remove(&k);
            }
            (Err(e), false) => assert!(e.is_not_found()),
            (got, present) => panic!("delete {k}: {got:?}, model present: {present}"),
        },
        Action::DeleteCas(k, p) => {
            let expected = p.resolve(model, &k);
            let got = store.delete_cas(&k, expected);
            if expected == 0 {
                assert!(matches!(got, Err(Error::CreateOnlyDelete(_))), "{got:?}");
            } else if model.index_ok(&k, expected) {
                assert_eq!(got.unwrap(), model.next());
                model.map.remove(&k);
            } else {
                assert_failure(&got.unwrap_err(), model, &k);
            }
        }
        Action::CompareAndSet(k, expected, new) => {
            let got = store.compare_and_set(k.clone(), expected.as_ref(), new);
            if model.value_ok(&k, expected) {
                let present = model.map.contains_key(&k);
                match new {
                    Some(v) => {
                        let want = model.next();
                        assert_eq!(got.unwrap(), Some(want));
                        model.write(&k, v, None, want);
                    }
                    None if present => {
                        assert_eq!(got.unwrap(), Some(model.next()));
                        model.map.remove(&k);
                    }
                    None => assert_eq!(got.unwrap(), None),
                }
            } else {
                let err = got.unwrap_err();
                assert_failure(&err, model, &k);
                assert!(err.is_conflict());
            }
        }
        Action::Update(k, add) => {
            let got = store.update(k.clone(), |v| v.copied().unwrap_or(0).wrapping_add(add));
            let want = model.next();
            assert_eq!(got.unwrap(), want);
            let v = model.map.get(&k).map_or(0, |e| e.value).wrapping_add(add);
            model.write(&k, v, None, want);
        }
        Action::Keys => {
            let want: Vec<_> = model.map.keys().cloned().collect();
            assert_eq!(store.keys(), want);
            assert_eq!(store.len(), want.len());
            let d: Vec<_> = want
                .iter()
                .filter(|k| k.starts_with("d/"))
                .cloned()
                .collect();
            assert_eq!(store.keys_with_prefix("d/"), d);
        }
        Action::Batch(actions) => apply_batch(store, model, actions),
    }
}

fn apply_batch(store: &Store<K, V>, model: &mut Model, actions: Vec<BatchAction>) {
    let mut ops = Vec::new();
    let mut resolved = Vec::new();
    for a in &actions {
        let op = match a.clone() {
            BatchAction::Set(k, v, Some(f)) => Op::set(k, v).with_flags(f),
            BatchAction::Set(k, v, None) => Op::set(k, v),
            BatchAction::SetCas(k, v, p) => {
                let e = p.resolve(model, &k);
                Op::set_cas(k, v, e)
            }
            BatchAction::Delete(k) => Op::delete(k),
            BatchAction::DeleteCas(k, p) => {
                let e = p.resolve(model, &k);
                Op::delete_cas(k, e)
            }
            BatchAction::Check(k, p) => {
                let e = p.resolve(model, &k);
                Op::check_index(k, e)
            }
            BatchAction::CompareAndSet(k, e, n) => Op::compare_and_set(k, e, n),
        };
        resolved.push(op.clone());
        ops.push(op);
    }
    let got = store.batch(ops);

    // The model's verdict, in the order the store checks: shape first, then conditions.
    let mut keys: Vec<&K> = resolved.iter().map(|op| op.key()).collect();
    keys.sort();
    if resolved.is_empty() {
        assert!(matches!(got, Err(Error::EmptyBatch)), "{got:?}");
        return;
    }
    if resolved.len() > 5 {
        assert!(
            matches!(got, Err(Error::BatchTooLarge { len: 6, max: 5 })),
            "{got:?}"
        );
        return;
    }
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        assert!(
            matches!(&got, Err(Error::DuplicateKey(k)) if k == w[0]),
            "{got:?}"
        );
        return;
    }
    if resolved
        .iter()
        .any(|op| matches!(op, Op::DeleteCas { expected: 0, .. }))
    {
        assert!(matches!(got, Err(Error::CreateOnlyDelete(_))), "{got:?}");
        return;
    }
    let mut failing: Vec<K> = Vec::new();
    for op in &resolved {
        let ok = match op {
            Op::Set { .. } => true,
            Op::SetCas { key, expected, .. } | Op::CheckIndex { key, expected } => {
                model.index_ok(key, *expected)
            }
            Op::Delete { key } => model.map.contains_key(key),
            Op::DeleteCas { key, expected } => model.index_ok(key, *expected),
            Op::CompareAndSet { key, expected, .. } => model.value_ok(key, *expected),
            _ => unreachable!("the test builds only these"),
        };
        if !ok {
            failing.push(op.key().clone());
        }
    }
    failing.sort();
    if !failing.is_empty() {
        let err = got.unwrap_err();
        let reported: Vec<K> = err.conflicts().iter().map(|c| c.key.clone()).collect();
        assert_eq!(reported, failing);
        for c in err.conflicts() {
            assert_eq!(
                c.current.as_ref().map(entry_of).as_ref(),
                model.map.get(&c.key)
            );
        }
        return;
    }
    let index = model.next();
    assert_eq!(got.unwrap(), index);
    for op in resolved {
        match op {
            Op::Set { key, value, flags } => model.write(&key, value, flags, index),
            Op::SetCas {
                key, value, flags, ..
            } => model.write(&key, value, flags, index),
            Op::Delete { key } | Op::DeleteCas { key, .. } => {
                model.map.remove(&key);
            }
            Op::CheckIndex { .. } => {}
            Op::CompareAndSet { key, new, .. } => match new {
                Some(v) => model.write(&key, v, None, index),
                None => {
                    model.map.remove(&key);
                }
            },
            _ => unreachable!("the test builds only these"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_sequential_model(actions in proptest::collection::vec(action(), 1..60)) {
        let store: Store<K, V> = Store::builder().max_batch(5).build();
        let mut model = Model::default();
        for action in actions {
            apply(&store, &mut model, action);
            // After every step a full scan agrees, indices included.
            let scan: Vec<(K, ModelEntry)> = store.entries().iter().map(|(k, e)| (k.clone(), entry_of(e))).collect();
            let want: Vec<(K, ModelEntry)> = model.map.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
            prop_assert_eq!(scan, want);
            prop_assert_eq!(store.global_index().high_water(), model.last);
        }
    }
}
