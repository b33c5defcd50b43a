//! The table under the cells (`src/table.rs`) through the public API: growth while writers,
//! readers and batches run, batches larger than the table they start in, and the tombs that
//! deletes leave behind.
//!
//! Each test runs a bounded number of operations under a watchdog (a stuck resize or a batch
//! that restarts forever fails the test rather than hanging it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::within;

use caskv::{Op, Store};

/// Scales sizes down under Miri.
const SCALE: u64 = if cfg!(miri) { 1 } else { 20 };

/// Regression: a batch of more new keys than a fresh table may claim used to release (its
/// claims left tombs), resize to the same size (tombs are not live), and start over forever.
#[test]
fn a_batch_of_more_new_keys_than_a_fresh_table_holds_commits() {
    within(Duration::from_secs(60), || {
        let store: Store<u64, u64> = Store::new();
        let ops = (0..1000).map(|k| Op::set_cas(k, k, 0)).collect();
        let at = store.batch(ops).expect("every key is absent");
        assert_eq!(store.len(), 1000);
        assert!((0..1000).all(|k| store.get(&k).is_some_and(|e| e.modify_index == at)));
        // A snapshot read of as many absent keys claims as many slots (tombs) and must finish too.
        let absent: Vec<u64> = (5000..6000).collect();
        let read = store.get_many(&absent).expect("within the bound");
        assert!(read.iter().all(Option::is_none));
        assert_eq!(store.len(), 1000);
    });
}

/// Writers inserting fresh keys (forcing resize after resize) while CAS incrementers work on a
/// few hot keys and a reader checks keys known to exist: no insert is lost or duplicated, every
/// successful increment counts, and the reader never misses a key.
#[test]
fn growth_under_concurrent_writers_loses_nothing() {
    within(Duration::from_secs(120), || {
        let store: Arc<Store<u64, u64>> = Arc::new(Store::new());
        let hot = 8u64;
        for k in 0..hot {
            store.set(k, 0);
        }
        let per_writer = 1000 * SCALE;
        let writers = 2u64;
        let barrier = Arc::new(Barrier::new(writers as usize + 2));
        let increments = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for w in 0..writers {
            let (store, barrier) = (store.clone(), barrier.clone());
            handles.push(std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per_writer {
                    let k = 1_000 + w * per_writer + i;
                    store.set_cas(k, k, 0).expect("each key is written once");
                }
            }));
        }
        {
            let (store, barrier, increments) = (store.clone(), barrier.clone(), increments.clone());
            handles.push(std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per_writer {
                    let k = i % hot;
                    let e = store.get(&k).expect("hot keys are never deleted");
                    if store.set_cas(k, e.value + 1, e.modify_index).is_ok() {
                        increments.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        barrier.wait();
        for i in 0..per_writer {
            assert!(
                store.get(&(i % hot)).is_some(),
                "a hot key vanished mid-resize"
            );
        }
        for h in handles {
            h.join().expect("worker");
        }
        let total: u64 = (0..hot).map(|k| store.get(&k).unwrap().value).sum();
        assert_eq!(total, increments.load(Ordering::Relaxed));
        assert_eq!(store.len() as u64, hot + writers * per_writer);
        let keys = store.keys();
        assert_eq!(
            keys.len() as u64,
            hot + writers * per_writer,
            "a key in two slots"
        );
        for w in 0..writers {
            for i in 0..per_writer {
                let k = 1_000 + w * per_writer + i;
                let e = store.get(&k).expect("an insert was lost in a resize");
                assert_eq!((e.value, e.create_index), (k, e.modify_index));
            }
        }
    });
}

/// Batches over overlapping keys, single-key writes, deletes and re-creates, while another
/// thread grows the table: every batch either commits whole or fails whole, and the final state
/// of every key matches the last successful write the threads report for it.
#[test]
fn batches_and_deletes_racing_resizes_stay_whole() {
    within(Duration::from_secs(120), || {
        let store: Arc<Store<u64, u64>> = Arc::new(Store::new());
        let keys = 6u64;
        let rounds = 200 * SCALE;
        let barrier = Arc::new(Barrier::new(3));
        let batcher = {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut last = HashMap::new();
                for r in 0..rounds {
                    let a = r % keys;
                    let b = (r + 1) % keys;
                    let value = 1_000_000 + r;
                    let at = store
                        .batch(vec![Op::set(a, value), Op::set(b, value)])
                        .expect("blind sets never conflict");
                    last.insert(a, (at, Some(value)));
                    last.insert(b, (at, Some(value)));
                    if r % 7 == 0 {
                        if let Ok(d) = store.delete(&a) {
                            last.insert(a, (d, None));
                        }
                    }
                }
                last
            })
        };
        let grower = {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for k in 0..rounds * 4 {
                    store.set(1_000 + k, k);
                }
            })
        };
        barrier.wait();
        // A reader: both keys of a batch always carry one value (the batch's) unless a delete
        // came between; a value from a batch is never torn from its partner.
        for _ in 0..rounds {
            for a in 0..keys {
                let b = (a + 1) % keys;
                let got = store.get_many(&[a, b]).expect("two keys");
                if let (Some(x), Some(y)) = (&got[0], &got[1]) {
                    if x.modify_index == y.modify_index {
                        assert_eq!(x.value, y.value, "one batch, two values");
                    }
                }
            }
        }
        let last = batcher.join().expect("batcher");
        grower.join().expect("grower");
        for (k, (index, value)) in last {
            match (store.get(&k), value) {
                (Some(e), Some(v)) => assert_eq!((e.modify_index, e.value), (index, v)),
                (None, None) => {}
                (got, want) => panic!("key {k}: {got:?}, want {want:?} at {index}"),
            }
        }
        assert!(store.len() as u64 >= rounds * 4);
    });
}

/// Creating and deleting ever new keys leaves tombs; resizes drop them, so the table grows
/// with the number of keys live, not with the number ever deleted.
#[test]
fn churn_of_deleted_keys_does_not_grow_the_table() {
    let store: Store<u64, u64> = Store::new();
    for k in 0..100 {
        store.set(k, k);
    }
    let settled = store.capacity();
    for k in 100..(100 + 500 * SCALE) {
        store.set(k, k);
        store.delete(&k).expect("just written");
        if k % 97 == 0 {
            assert_eq!(store.len(), 100);
        }
        assert!(
            store.capacity() <= 2 * settled,
            "the table grew to {} for 100 live keys",
            store.capacity()
        );
    }
    assert_eq!(store.len(), 100);
    assert_eq!(store.keys(), (0..100).collect::<Vec<_>>());
    // A re-create reuses the key's tomb (or a fresh slot after a resize) and gets fresh indices.
    let a = store.set(100, 1);
    assert_eq!(store.get(&100).unwrap().create_index, a);
}

/// A key whose `Clone`, `Ord` or `Eq` can be told to misbehave, to check that user code
/// panicking (or lying) inside a batch never leaves a slot held.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Touchy(u64);

thread_local! {
    /// Clones left before `Touchy::clone` panics (`u64::MAX`: never).
    static CLONES_LEFT: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
}

impl Clone for Touchy {
    fn clone(&self) -> Self {
        CLONES_LEFT.with(|left| {
            let n = left.get();
            if n == 0 {
                left.set(u64::MAX);
                panic!("Touchy::clone told to panic");
            }
            left.set(n.saturating_sub(1));
        });
        Touchy(self.0)
    }
}

/// Whatever clone of a key panics while a batch locks, validates, commits or releases, every
/// key the batch touched can be written again afterwards (no slot stays locked), and the batch
/// either committed whole or not at all.
#[test]
fn a_key_clone_panicking_anywhere_in_a_batch_leaves_no_slot_held() {
    within(Duration::from_secs(60), || {
        for fail_at in 0..12 {
            let store: Store<Touchy, u64> = Store::new();
            store.set(Touchy(1), 1);
            let ops = vec![
                Op::check_index(Touchy(0), 0), // an absent key: its slot is claimed
                Op::set(Touchy(1), 10),
                Op::set_cas(Touchy(2), 20, 0),
            ];
            CLONES_LEFT.with(|left| left.set(fail_at));
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.batch(ops.clone())));
            CLONES_LEFT.with(|left| left.set(u64::MAX));
            let one = store.get(&Touchy(1)).unwrap();
            let two = store.get(&Touchy(2));
            match outcome {
                Ok(Ok(at)) => {
                    assert_eq!((one.value, one.modify_index), (10, at));
                    assert_eq!(two.map(|e| e.modify_index), Some(at));
                }
                Ok(Err(e)) => panic!("the batch cannot conflict: {e:?}"),
                Err(_) => {
                    // Nothing of the batch, or all of it, is visible.
                    assert_eq!(one.value == 10, two.is_some(), "half a batch after a panic");
                }
            }
            // Every key is writable again: a held slot would make these wait forever.
            for k in 0..3 {
                store.set(Touchy(k), 99);
            }
            assert_eq!(store.len(), 3);
            drop(ops);
            let again = (0..3).map(|k| Op::set(Touchy(k), 7)).collect();
            store.batch(again).expect("a fresh batch on the same keys");
        }
    });
}

/// Keys whose `Ord` says two different keys are equal escape the batch's duplicate check
/// (it compares sorted neighbours with `Eq`); locking the second must fail, not wait for itself.
#[test]
fn a_key_locked_twice_by_one_batch_is_a_duplicate_not_a_deadlock() {
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Liar(u64);
    impl PartialOrd for Liar {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Liar {
        fn cmp(&self, _: &Self) -> std::cmp::Ordering {
            std::cmp::Ordering::Equal // everything sorts as equal: [a, b, a] stays in order
        }
    }
    within(Duration::from_secs(30), || {
        let store: Store<Liar, u64> = Store::new();
        let err = store
            .batch(vec![
                Op::set(Liar(1), 1),
                Op::set(Liar(2), 2),
                Op::set(Liar(1), 3),
            ])
            .unwrap_err();
        assert!(err.is_invalid_argument(), "{err:?}");
        assert!(store.is_empty(), "nothing applied");
        store.set(Liar(1), 4); // and nothing left locked
        assert_eq!(store.get(&Liar(1)).unwrap().value, 4);
    });
}
