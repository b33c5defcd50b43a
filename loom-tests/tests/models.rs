//! loom models of caskv's cell and batch protocols, run against the real `Store`.
//!
//! Run with `RUSTFLAGS="--cfg caskv_loom" cargo test -p caskv-loom-tests
//! --release` (see `ci/loom.sh`). Each model is small: 2–3 threads, 1–2 keys.
#![cfg(caskv_loom)]

use caskv::{Op, Store};
use loom::sync::Arc;
use loom::thread;

type S = Store<&'static str, u32>;

mod support;
use support::model;

/// Two CAS on one key from the same index: exactly one wins, and the loser's conflict names
/// the winner's index.
#[test]
fn two_cas_on_one_key_exactly_one_wins() {
    model(|| {
        let store = Arc::new(S::new());
        let a = store.set("k", 0);
        let spawn = |v| {
            let store = store.clone();
            thread::spawn(move || store.set_cas("k", v, a))
        };
        let (t1, t2) = (spawn(1), spawn(2));
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        let (winner, value, loser) = match (r1, r2) {
            (Ok(i), Err(e)) => (i, 1, e),
            (Err(e), Ok(i)) => (i, 2, e),
            other => panic!("exactly one CAS must win: {other:?}"),
        };
        assert!(loser.is_conflict());
        assert_eq!(loser.conflict().unwrap().current_index(), Some(winner));
        let e = store.get("k").unwrap();
        assert_eq!(
            (e.value, e.modify_index, e.create_index),
            (value, winner, a)
        );
    });
}

/// A delete-by-CAS racing a create-only set on the same key: the create can only succeed after
/// the delete, and then it is never lost.
#[test]
fn cas_delete_vs_create_only_recreate() {
    model(|| {
        let store = Arc::new(S::new());
        let a = store.set("k", 0);
        let s1 = store.clone();
        let deleter = thread::spawn(move || s1.delete_cas(&"k", a));
        let s2 = store.clone();
        let creator = thread::spawn(move || s2.set_cas("k", 7, 0));
        let deleted = deleter.join().unwrap();
        let created = creator.join().unwrap();
        let d = deleted.expect("the delete at the current index always succeeds");
        match created {
            Ok(c) => {
                assert!(c > d, "create-only after the delete takes a later index");
                let e = store.get("k").expect("a re-create is never lost");
                assert_eq!((e.value, e.modify_index, e.create_index), (7, c, c));
            }
            Err(e) => {
                assert!(e.is_conflict(), "{e:?}");
                assert!(store.get("k").is_none());
            }
        }
    });
}

/// A plain delete racing a plain set: the set is either overwritten by a later delete (whose
/// index is higher) or survives; it never vanishes into a retired cell.
#[test]
fn delete_vs_set_never_loses_the_set() {
    model(|| {
        let store = Arc::new(S::new());
        store.set("k", 0);
        let s1 = store.clone();
        let deleter = thread::spawn(move || s1.delete(&"k"));
        let s2 = store.clone();
        let setter = thread::spawn(move || s2.set("k", 9));
        let deleted = deleter.join().unwrap();
        let set = setter.join().unwrap();
        match store.get("k") {
            Some(e) => {
                assert_eq!((e.value, e.modify_index), (9, set));
                if let Ok(d) = deleted {
                    assert!(d < set, "the delete came first, so the set is newer");
                }
            }
            None => {
                let d = deleted.expect("the key is gone only through the delete");
                assert!(d > set, "the delete removed the set, so it came later");
            }
        }
    });
}

/// A batch and a single-key CAS on an overlapping key, both from the same index: exactly one
/// wins, and the batch is all-or-nothing.
#[test]
fn batch_vs_single_key_cas_on_overlapping_key() {
    model(|| {
        let store = Arc::new(S::new());
        let a = store.set("a", 0);
        let b = store.set("b", 0);
        let s1 = store.clone();
        let batch =
            thread::spawn(move || s1.batch(vec![Op::set_cas("a", 1, a), Op::set_cas("b", 1, b)]));
        let s2 = store.clone();
        let single = thread::spawn(move || s2.set_cas("a", 2, a));
        let (rb, rs) = (batch.join().unwrap(), single.join().unwrap());
        let (ea, eb) = (store.get("a").unwrap(), store.get("b").unwrap());
        match (rb, rs) {
            (Ok(i), Err(e)) => {
                assert!(e.is_conflict());
                assert_eq!(
                    (ea.value, ea.modify_index, eb.value, eb.modify_index),
                    (1, i, 1, i)
                );
            }
            (Err(e), Ok(i)) => {
                assert_eq!(e.conflicts().len(), 1);
                assert_eq!(
                    (ea.value, ea.modify_index, eb.value, eb.modify_index),
                    (2, i, 0, b)
                );
            }
            other => panic!("exactly one must win: {other:?}"),
        }
    });
}

/// Two batches over the same keys listed in opposite order: no deadlock, and the result is one
/// batch after the other (both keys from the later one, at one index).
#[test]
fn two_batches_in_opposite_key_order() {
    model(|| {
        let store = Arc::new(S::new());
        let s1 = store.clone();
        let t1 = thread::spawn(move || s1.batch(vec![Op::set("a", 1), Op::set("b", 1)]).unwrap());
        let s2 = store.clone();
        let t2 = thread::spawn(move || s2.batch(vec![Op::set("b", 2), Op::set("a", 2)]).unwrap());
        let (i1, i2) = (t1.join().unwrap(), t2.join().unwrap());
        let (ea, eb) = (store.get("a").unwrap(), store.get("b").unwrap());
        assert_eq!(
            ea.modify_index, eb.modify_index,
            "one batch's keys share its index"
        );
        assert_eq!(ea.value, eb.value);
        let last = if ea.value == 1 { i1 } else { i2 };
        assert_eq!(ea.modify_index, last);
    });
}

/// A reader making two reads while a batch commits never sees the first key new and the
/// second old, in either read order.
#[test]
fn reader_never_sees_half_a_batch() {
    model(|| {
        let store = Arc::new(S::new());
        store.set("a", 0);
        store.set("b", 0);
        let s1 = store.clone();
        let writer =
            thread::spawn(move || s1.batch(vec![Op::set("a", 1), Op::set("b", 1)]).unwrap());
        let s2 = store.clone();
        let reader = thread::spawn(move || {
            let first = s2.get("a").unwrap().value;
            let second = s2.get("b").unwrap().value;
            assert!(!(first == 1 && second == 0), "saw a new and then b old");
            let first = s2.get("b").unwrap().value;
            let second = s2.get("a").unwrap().value;
            assert!(!(first == 1 && second == 0), "saw b new and then a old");
        });
        writer.join().unwrap();
        reader.join().unwrap();
    });
}

/// A batch that fails validation restores every key: a concurrent reader sees only the old
/// versions, and a concurrent writer of a held key lands after the release.
#[test]
fn aborted_batch_is_invisible() {
    model(|| {
        let store = Arc::new(S::new());
        let a = store.set("a", 0);
        let s1 = store.clone();
        let batch = thread::spawn(move || {
            // "b" is absent, so the CAS on it fails and nothing may change.
            s1.batch(vec![Op::set_cas("a", 1, a), Op::set_cas("b", 1, 99)])
                .unwrap_err()
        });
        let s2 = store.clone();
        let reader = thread::spawn(move || {
            let e = s2.get("a").unwrap();
            assert_eq!((e.value, e.modify_index), (0, a));
            assert!(s2.get("b").is_none());
        });
        let err = batch.join().unwrap();
        reader.join().unwrap();
        assert_eq!(err.conflicts().len(), 1);
        assert!(
            store.get("b").is_none(),
            "the vacant cell the batch made is gone"
        );
        assert_eq!(store.keys(), ["a"]);
    });
}

/// Per key, the modify_index a reader observes never goes backwards.
#[test]
fn per_key_index_is_monotonic() {
    model(|| {
        let store = Arc::new(S::new());
        store.set("k", 0);
        let s1 = store.clone();
        let w1 = thread::spawn(move || s1.set("k", 1));
        let s2 = store.clone();
        let w2 = thread::spawn(move || {
            s2.set("k", 2);
        });
        let first = store.get("k").unwrap().modify_index;
        let second = store.get("k").unwrap().modify_index;
        assert!(second >= first);
        w1.join().unwrap();
        w2.join().unwrap();
        let last = store.get("k").unwrap().modify_index;
        assert!(last >= second);
    });
}
