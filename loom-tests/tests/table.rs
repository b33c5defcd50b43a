//! loom models of the table under the cells (`src/table.rs`): claims of empty slots, and
//! resizes racing single-key writes, deletes, batches and readers.
//!
//! Under loom a table starts with 4 slots and may claim 2, so the third key of a model makes
//! the claimant start a resize, and every other thread that writes meets it mid-copy. Run with
//! `ci/loom.sh`.
#![cfg(caskv_loom)]

use caskv::{Op, Store};
use loom::sync::Arc;
use loom::thread;

type S = Store<&'static str, u32>;

mod support;
use support::model;

/// Two create-only writes of an absent key race for its first empty slot: one claim wins, the
/// other sees the key there and fails as a conflict (never a second slot for the same key).
#[test]
fn two_creators_of_one_key_claim_one_slot() {
    model(|| {
        let store = Arc::new(S::new());
        let spawn = |v| {
            let store = store.clone();
            thread::spawn(move || store.set_cas("k", v, 0))
        };
        let (t1, t2) = (spawn(1), spawn(2));
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        let (index, value) = match (r1, r2) {
            (Ok(i), Err(e)) => {
                assert!(e.is_conflict(), "{e:?}");
                (i, 1)
            }
            (Err(e), Ok(i)) => {
                assert!(e.is_conflict(), "{e:?}");
                (i, 2)
            }
            other => panic!("exactly one create may win: {other:?}"),
        };
        let e = store.get("k").unwrap();
        assert_eq!(
            (e.value, e.modify_index, e.create_index),
            (value, index, index)
        );
        assert_eq!(store.len(), 1);
    });
}

/// A CAS racing the resize that a third key starts: the CAS lands exactly once (in the old
/// table before its slot froze, or in the new one after), and no key is lost or duplicated.
#[test]
fn cas_racing_a_resize_lands_once() {
    model(|| {
        let store = Arc::new(S::new());
        let a = store.set("a", 0);
        let b = store.set("b", 0);
        let s1 = store.clone();
        let grower = thread::spawn(move || s1.set("c", 3));
        let s2 = store.clone();
        let writer = thread::spawn(move || s2.set_cas("a", 1, a));
        let c = grower.join().unwrap();
        let wrote = writer
            .join()
            .unwrap()
            .expect("nobody else writes a: the CAS must win");
        let ea = store.get("a").unwrap();
        assert_eq!((ea.value, ea.modify_index, ea.create_index), (1, wrote, a));
        let eb = store.get("b").unwrap();
        assert_eq!((eb.value, eb.modify_index), (0, b));
        assert_eq!(store.get("c").unwrap().modify_index, c);
        assert_eq!(store.keys(), ["a", "b", "c"]);
    });
}

/// A reader during a resize always finds the keys that exist throughout (a frozen slot still
/// shows its value), and a key written before the reader starts is seen.
#[test]
fn readers_see_every_key_through_a_resize() {
    model(|| {
        let store = Arc::new(S::new());
        store.set("a", 1);
        store.set("b", 2);
        let s1 = store.clone();
        let grower = thread::spawn(move || {
            s1.set("c", 3);
            s1.set("d", 4);
        });
        for _ in 0..2 {
            assert_eq!(store.get("a").map(|e| e.value), Some(1));
            assert_eq!(store.get("b").map(|e| e.value), Some(2));
        }
        grower.join().unwrap();
        assert_eq!(store.keys(), ["a", "b", "c", "d"]);
    });
}

/// A delete and re-create of one key racing a resize: the tomb the delete leaves is dropped by
/// the copy or overwritten by the re-create, and the re-create is never lost.
#[test]
fn delete_and_recreate_racing_a_resize() {
    model(|| {
        let store = Arc::new(S::new());
        let a = store.set("a", 0);
        store.set("b", 0);
        let s1 = store.clone();
        let churn = thread::spawn(move || {
            let d = s1.delete_cas(&"a", a).expect("only we write a");
            let c = s1.set_cas("a", 7, 0).expect("a is absent after our delete");
            assert!(c > d);
            c
        });
        let s2 = store.clone();
        let grower = thread::spawn(move || s2.set("c", 3));
        let c = churn.join().unwrap();
        grower.join().unwrap();
        let e = store.get("a").expect("the re-create is never lost");
        assert_eq!((e.value, e.modify_index, e.create_index), (7, c, c));
        assert_eq!(store.keys(), ["a", "b", "c"]);
    });
}

/// A batch that meets a resize while locking lets go, helps, and starts again: it commits
/// exactly once, all-or-nothing, and a concurrent reader never sees half of it.
#[test]
fn batch_racing_a_resize_commits_whole() {
    model(|| {
        let store = Arc::new(S::new());
        store.set("a", 0);
        store.set("b", 0);
        let s1 = store.clone();
        let batch = thread::spawn(move || s1.batch(vec![Op::set("a", 1), Op::set("c", 1)]));
        let s2 = store.clone();
        let grower = thread::spawn(move || s2.set("d", 4));
        // Reads "c" then "a": once c is new, a must be new too.
        let c_new = store.get("c").is_some_and(|e| e.value == 1);
        let a_new = store.get("a").is_some_and(|e| e.value == 1);
        assert!(!c_new || a_new, "saw c from the batch but a from before it");
        let at = batch.join().unwrap().expect("no condition to fail");
        grower.join().unwrap();
        assert_eq!(store.get("a").unwrap().modify_index, at);
        assert_eq!(store.get("c").unwrap().modify_index, at);
        assert_eq!(store.keys(), ["a", "b", "c", "d"]);
    });
}
