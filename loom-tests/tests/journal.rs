//! loom models of the journal protocol, run against the real `Store` built with
//! `build_journaled`.
//!
//! The claim checked: for every key, the journal receives that key's mutations in the order they
//! were applied in memory, which is strictly increasing `modify_index` order; every mutation the
//! store reports as applied is recorded exactly once, and nothing else is; and the last mutation
//! recorded for a key is the key's state in the store (value and both indices for a set, absent
//! for a delete). The journal is a stand-in that appends one [`Logged`] per key to a loom
//! `Mutex<Vec<_>>`, so loom also explores the schedules around the journal's own lock.
//!
//! Run with `RUSTFLAGS="--cfg caskv_loom" cargo test -p caskv-loom-tests
//! --release --test journal` (see `ci/loom.sh`). Each model is small: 2–3 threads, 1–2 keys.
#![cfg(caskv_loom)]

use caskv::{Journal, Mutation, Op, Store};
use loom::sync::{Arc, Mutex};
use loom::thread;

type S = Store<&'static str, u32>;

mod support;
use support::model;

/// `model` with the preemption bound capped at 1 (whatever `LOOM_MAX_PREEMPTIONS` says), for a
/// model in which two threads can wait on the same settling key at once.
///
/// Why: in loom's bounded search, switching away from a thread that yields costs no
/// preemption. From bound 2 on, once the writer of a settling head has been preempted, loom
/// also explores the two waiters yielding to each other forever while that writer never runs
/// again, and stops with "Model exceeded maximum number of branches". That is the search, not
/// the store: the writer takes no lock a waiter holds and settles as soon as it is scheduled.
fn model_two_waiters(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.map_or(1, |b| b.min(1)));
    builder.check(f);
}

/// One key's mutation as the journal received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Logged {
    key: &'static str,
    /// `Some((value, create_index))` for a set, `None` for a delete.
    state: Option<(u32, u64)>,
    /// The mutation's `modify_index` (a batch's one index for each of its keys).
    index: u64,
}

/// The journal stand-in: appends every mutation, one entry per key, and returns the new length.
#[derive(Clone)]
struct Recorder(Arc<Mutex<Vec<Logged>>>);

impl Recorder {
    fn new() -> Self {
        Recorder(Arc::new(Mutex::new(Vec::new())))
    }

    fn log(&self) -> Vec<Logged> {
        self.0.lock().unwrap().clone()
    }
}

impl Journal<&'static str, u32> for Recorder {
    fn record(&self, mutation: Mutation<'_, &'static str, u32>) -> u64 {
        let mut log = self.0.lock().unwrap();
        match mutation {
            Mutation::Set { key, entry } => log.push(Logged {
                key,
                state: Some((*entry.value, entry.create_index)),
                index: entry.modify_index,
            }),
            Mutation::Delete { key, index } => log.push(Logged {
                key,
                state: None,
                index,
            }),
            Mutation::Batch { index, writes } => {
                assert!(
                    !writes.is_empty(),
                    "a committed batch records what it changed"
                );
                for (key, entry) in writes {
                    if let Some(e) = entry {
                        assert_eq!(e.modify_index, index, "a batch's versions take its index");
                    }
                    log.push(Logged {
                        key,
                        state: entry.map(|e| (*e.value, e.create_index)),
                        index,
                    });
                }
            }
            other => panic!("a mutation these models do not make: {other:?}"),
        }
        log.len() as u64
    }
}

/// A fresh journaled store and its journal.
fn journaled() -> (Arc<S>, Recorder) {
    let recorder = Recorder::new();
    let store: S = Store::builder().build_journaled(Box::new(recorder.clone()));
    (Arc::new(store), recorder)
}

/// The key's state in the store: `(value, modify_index, create_index)`, or `None` if absent.
fn state(store: &S, key: &'static str) -> Option<(u32, u64, u64)> {
    store
        .get(key)
        .map(|e| (e.value, e.modify_index, e.create_index))
}

/// Checks one key's records in `log` against what the store reported and holds:
/// - they are exactly `applied` (each write the store reported as done, as `(index, value)`
///   with `None` for a delete), each once, in strictly increasing index order;
/// - the last one is `now`, the key's state in the store (`None`: absent).
///
/// Returns the positions of the key's records in `log`.
fn check_key(
    log: &[Logged],
    key: &'static str,
    applied: &[(u64, Option<u32>)],
    now: Option<(u32, u64, u64)>,
) -> Result<Vec<usize>, String> {
    let mine: Vec<(usize, Logged)> = log
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, l)| l.key == key)
        .collect();
    if let Some(w) = mine.windows(2).find(|w| w[0].1.index >= w[1].1.index) {
        return Err(format!(
            "{key:?}: journal order is not index order: {:?} recorded before {:?}",
            w[0].1, w[1].1
        ));
    }
    let mut expected = applied.to_vec();
    expected.sort_by_key(|&(index, _)| index);
    let got: Vec<(u64, Option<u32>)> = mine
        .iter()
        .map(|(_, l)| (l.index, l.state.map(|(v, _)| v)))
        .collect();
    if got != expected {
        return Err(format!(
            "{key:?}: journal has {got:?}, the store applied {expected:?}"
        ));
    }
    let last = mine
        .last()
        .map(|(_, l)| l.state.map(|(v, created)| (v, l.index, created)));
    match (last, now) {
        (Some(last), now) if last == now => {}
        (None, None) => {}
        (last, now) => {
            return Err(format!(
                "{key:?}: last journaled {last:?} but the store holds {now:?}"
            ))
        }
    }
    Ok(mine.into_iter().map(|(at, _)| at).collect())
}

/// `check_key` as an assertion, with the whole journal in the message.
fn assert_key(
    log: &[Logged],
    key: &'static str,
    applied: &[(u64, Option<u32>)],
    now: Option<(u32, u64, u64)>,
) -> Vec<usize> {
    check_key(log, key, applied, now).unwrap_or_else(|e| panic!("{e}\njournal: {log:?}"))
}

/// The checker itself (no loom): it accepts a journal that matches the store and rejects one
/// recorded out of order, one that lost or invented a mutation, and one whose last record is
/// not the store's state.
#[test]
fn checker_rejects_broken_journals() {
    let set = |index, value, created| Logged {
        key: "k",
        state: Some((value, created)),
        index,
    };
    let del = |index| Logged {
        key: "k",
        state: None,
        index,
    };
    let other = Logged {
        key: "o",
        state: Some((5, 9)),
        index: 9,
    };
    let applied = [(1, Some(0)), (3, None), (2, Some(1))];

    // In order, with another key interleaved: accepted.
    let good = [set(1, 0, 1), other, set(2, 1, 1), del(3)];
    assert_eq!(check_key(&good, "k", &applied, None), Ok(vec![0, 2, 3]));
    // A re-create after the delete, and the store holding it.
    let recreated = [set(1, 0, 1), del(2), set(3, 7, 3)];
    let applied_recreated = [(2, None), (3, Some(7)), (1, Some(0))];
    assert!(check_key(&recreated, "k", &applied_recreated, Some((7, 3, 3))).is_ok());

    // Two writes recorded in the opposite order to their indices.
    let swapped = [set(1, 0, 1), del(3), set(2, 1, 1)];
    let e = check_key(&swapped, "k", &applied, None).unwrap_err();
    assert!(e.contains("not index order"), "{e}");
    // The re-create recorded before the delete it followed (a cell unlinked before it settled).
    let early = [set(1, 0, 1), set(3, 7, 3), del(2)];
    let e = check_key(&early, "k", &applied_recreated, Some((7, 3, 3))).unwrap_err();
    assert!(e.contains("not index order"), "{e}");
    // A mutation the store applied that never reached the journal.
    let lost = [set(1, 0, 1), del(3)];
    let e = check_key(&lost, "k", &applied, None).unwrap_err();
    assert!(e.contains("the store applied"), "{e}");
    // A record for a write the store did not apply (a failed CAS journaled anyway).
    let invented = [set(1, 0, 1), set(2, 1, 1), set(3, 4, 1), del(4)];
    let e = check_key(&invented, "k", &applied, None).unwrap_err();
    assert!(e.contains("the store applied"), "{e}");
    // The same record twice.
    let twice = [set(1, 0, 1), set(1, 0, 1), set(2, 1, 1), del(3)];
    assert!(check_key(&twice, "k", &applied, None).is_err());
    // The journal ends in a delete but the store still holds the key, and the other way round.
    let e = check_key(&good, "k", &applied, Some((1, 2, 1))).unwrap_err();
    assert!(e.contains("store holds"), "{e}");
    let e = check_key(&recreated, "k", &applied_recreated, None).unwrap_err();
    assert!(e.contains("store holds"), "{e}");
    // A set journaled with other indices than the store holds.
    let e = check_key(&recreated, "k", &applied_recreated, Some((7, 3, 1))).unwrap_err();
    assert!(e.contains("store holds"), "{e}");
    // A key never written and absent passes; one absent from the journal but present fails.
    assert_eq!(check_key(&good, "z", &[], None), Ok(vec![]));
    assert!(check_key(&good, "z", &[], Some((1, 1, 1))).is_err());
}

/// Two plain sets of one key: the journal has the initial set and both sets in index order,
/// and its last record is the winner the store holds.
#[test]
fn journal_two_sets_in_index_order() {
    model(|| {
        let (store, journal) = journaled();
        let a = store.set("k", 0);
        let spawn = |v| {
            let store = store.clone();
            thread::spawn(move || store.set("k", v))
        };
        let (t1, t2) = (spawn(1), spawn(2));
        let (i1, i2) = (t1.join().unwrap(), t2.join().unwrap());
        let now = state(&store, "k");
        assert_eq!(now.map(|(_, _, created)| created), Some(a));
        assert_key(
            &journal.log(),
            "k",
            &[(a, Some(0)), (i1, Some(1)), (i2, Some(2))],
            now,
        );
    });
}

/// A CAS set racing a plain delete: whichever order they took, the journal has them in that
/// order, and a CAS that failed (the delete came first) is not journaled.
#[test]
fn journal_set_cas_vs_delete_in_index_order() {
    model(|| {
        let (store, journal) = journaled();
        let a = store.set("k", 0);
        let s1 = store.clone();
        let setter = thread::spawn(move || s1.set_cas("k", 1, a));
        let s2 = store.clone();
        let deleter = thread::spawn(move || s2.delete(&"k"));
        let set = setter.join().unwrap();
        let d = deleter
            .join()
            .unwrap()
            .expect("the key is present until the delete");
        let mut applied = vec![(a, Some(0)), (d, None)];
        match set {
            Ok(s) => {
                assert!(s < d, "a CAS from `a` lands only before the delete");
                applied.push((s, Some(1)));
            }
            // The delete came first: a CAS at `a` on an absent key is `NotFound`.
            Err(e) => assert!(matches!(e, caskv::Error::NotFound("k")), "{e:?}"),
        }
        let now = state(&store, "k");
        assert_eq!(now, None, "the delete is last either way");
        assert_key(&journal.log(), "k", &applied, now);
    });
}

/// A delete-by-CAS racing a create-only set: the delete retires the cell and the re-create
/// lands on a fresh one, yet its record comes after the delete's (the retired cell is
/// unlinked only once the delete's record is taken).
#[test]
fn journal_recreate_recorded_after_delete() {
    model(|| {
        let (store, journal) = journaled();
        let a = store.set("k", 0);
        let s1 = store.clone();
        let deleter = thread::spawn(move || s1.delete_cas(&"k", a));
        let s2 = store.clone();
        let creator = thread::spawn(move || s2.set_cas("k", 7, 0));
        let d = deleter
            .join()
            .unwrap()
            .expect("the delete at the current index always succeeds");
        let created = creator.join().unwrap();
        let log = journal.log();
        let now = state(&store, "k");
        match created {
            Ok(c) => {
                assert_eq!(now, Some((7, c, c)), "a re-create is never lost");
                let at = assert_key(&log, "k", &[(a, Some(0)), (d, None), (c, Some(7))], now);
                assert!(
                    at[1] < at[2],
                    "the re-create recorded before the delete: {log:?}"
                );
            }
            Err(e) => {
                assert!(e.is_conflict(), "{e:?}");
                assert_key(&log, "k", &[(a, Some(0)), (d, None)], now);
            }
        }
    });
}

/// Three writers of one key: a plain set, a plain delete and a create-only set. The delete
/// retires the cell while the others wait on it; whatever lands, the journal has it once, in
/// index order, and ends in the store's state. Two writers can wait at once here, so this
/// model runs at preemption bound 1 (see `model_two_waiters`).
#[test]
fn journal_three_writers_of_one_key() {
    model_two_waiters(|| {
        let (store, journal) = journaled();
        let a = store.set("k", 0);
        let s1 = store.clone();
        let setter = thread::spawn(move || s1.set("k", 2));
        let s2 = store.clone();
        let deleter = thread::spawn(move || s2.delete(&"k"));
        let s3 = store.clone();
        let creator = thread::spawn(move || s3.set_cas("k", 7, 0));
        let i = setter.join().unwrap();
        let d = deleter
            .join()
            .unwrap()
            .expect("the key is present until the delete");
        let mut applied = vec![(a, Some(0)), (i, Some(2)), (d, None)];
        match creator.join().unwrap() {
            Ok(c) => {
                assert!(d < c, "a create-only set lands only after the delete");
                applied.push((c, Some(7)));
            }
            Err(e) => assert!(e.is_conflict(), "{e:?}"),
        }
        assert_key(&journal.log(), "k", &applied, state(&store, "k"));
    });
}

/// A batch over two keys racing a plain set of one of them: per key the journal is in index
/// order and ends in the store's state, and the batch is one run of records at one index.
#[test]
fn journal_batch_vs_single_set() {
    model(|| {
        let (store, journal) = journaled();
        let a = store.set("a", 0);
        let s1 = store.clone();
        let batch =
            thread::spawn(move || s1.batch(vec![Op::set("b", 1), Op::set("a", 1)]).unwrap());
        let s2 = store.clone();
        let single = thread::spawn(move || s2.set("a", 2));
        let (ib, is) = (batch.join().unwrap(), single.join().unwrap());
        let log = journal.log();
        let (now_a, now_b) = (state(&store, "a"), state(&store, "b"));
        assert_key(
            &log,
            "a",
            &[(a, Some(0)), (ib, Some(1)), (is, Some(2))],
            now_a,
        );
        assert_key(&log, "b", &[(ib, Some(1))], now_b);
        let first = log.iter().position(|l| l.index == ib).unwrap();
        let run: Vec<_> = log
            .iter()
            .skip(first)
            .take(2)
            .map(|l| (l.key, l.index))
            .collect();
        assert_eq!(
            run,
            [("a", ib), ("b", ib)],
            "one record, in key order: {log:?}"
        );
        assert_eq!(log.iter().filter(|l| l.index == ib).count(), 2);
    });
}

/// A batch that deletes one key and sets another, racing a plain set of the deleted key:
/// the batch's delete is journaled as one, and a set after it is journaled after it.
#[test]
fn journal_batch_delete_vs_single_set() {
    model(|| {
        let (store, journal) = journaled();
        let a = store.set("a", 0);
        let s1 = store.clone();
        let batch = thread::spawn(move || s1.batch(vec![Op::delete("a"), Op::set("b", 1)]));
        let s2 = store.clone();
        let single = thread::spawn(move || s2.set("a", 2));
        let (rb, is) = (batch.join().unwrap(), single.join().unwrap());
        let log = journal.log();
        let ib = rb.expect("\"a\" is present whichever runs first");
        let now_a = state(&store, "a");
        if is > ib {
            assert_eq!(
                now_a,
                Some((2, is, is)),
                "a set after the delete re-creates"
            );
        } else {
            assert_eq!(now_a, None, "the batch deleted the set");
        }
        assert_key(&log, "a", &[(a, Some(0)), (ib, None), (is, Some(2))], now_a);
        assert_key(&log, "b", &[(ib, Some(1))], state(&store, "b"));
    });
}

/// A reader during journaled writes (a set, then a delete) never waits and never sees
/// anything but a state the journal also goes through, in the same order.
#[test]
fn journal_reader_sees_journaled_states() {
    model(|| {
        let (store, journal) = journaled();
        let a = store.set("k", 0);
        let s1 = store.clone();
        let writer = thread::spawn(move || {
            let i = s1.set("k", 1);
            let d = s1.delete(&"k").unwrap();
            (i, d)
        });
        let s2 = store.clone();
        let reader = thread::spawn(move || [state(&s2, "k"), state(&s2, "k")]);
        let (i, d) = writer.join().unwrap();
        let seen = reader.join().unwrap();
        let states = [Some((0, a, a)), Some((1, i, a)), None];
        let rank = |s| {
            states
                .iter()
                .position(|t| *t == s)
                .unwrap_or_else(|| panic!("the reader saw {s:?}, not one of {states:?}"))
        };
        assert!(
            rank(seen[0]) <= rank(seen[1]),
            "the reader went back: {seen:?}"
        );
        assert_key(
            &journal.log(),
            "k",
            &[(a, Some(0)), (i, Some(1)), (d, None)],
            state(&store, "k"),
        );
    });
}
