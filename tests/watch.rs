//! Watches and the change feed, in the library: a write wakes only its key's watchers and
//! those of prefixes that contain it; deletes, batches, expiries and evictions wake and feed
//! like any write; the feed is gap-free, in index order, compacted explicitly; a watch racing a
//! write never misses it; the `changed()` future needs no runtime.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use caskv::{Change, Compacted, HistoryLimits, Op, Store};

type S = Store<String, u32>;

fn k(s: &str) -> String {
    s.to_string()
}

fn history() -> S {
    Store::builder().history(HistoryLimits::default()).build()
}

const LONG: Duration = Duration::from_secs(20);

#[test]
fn a_write_wakes_only_its_keys_watchers() {
    let store: S = Store::new();
    let mut watched = store.watch("a", 0);
    for i in 0..100 {
        store.set(format!("other/{i}"), i);
    }
    store.delete("other/1").unwrap();
    store
        .batch(vec![Op::set(k("other/x"), 1), Op::set(k("other/y"), 2)])
        .unwrap();
    assert_eq!(
        store.watch_counts(),
        (1, 0),
        "writes to other keys woke someone"
    );
    assert!(watched.wait(Duration::from_millis(5)).is_none());
    let index = store.set(k("a"), 7);
    assert_eq!(store.watch_counts(), (1, 1));
    let seen = watched.wait(LONG).expect("the write to the key answers");
    assert_eq!((seen.index, seen.entry.unwrap().value), (index, 7));
    assert_eq!(watched.after(), index);
    drop(watched);
    store.set(k("a"), 8);
    assert_eq!(store.watch_counts(), (0, 1), "a dropped watch is gone");
}

#[test]
fn a_watch_answers_at_once_when_the_state_is_already_newer() {
    let store: S = Store::new();
    let first = store.set(k("a"), 1);
    let second = store.set(k("a"), 2);
    let mut w = store.watch("a", first);
    let seen = w.wait(Duration::ZERO).unwrap();
    assert_eq!(seen.index, second);
    // A key never written: index 0, absent; after 0 it waits.
    let mut never = store.watch("never", 0);
    assert!(never.wait(Duration::from_millis(1)).is_none());
}

#[test]
fn deletes_and_batches_wake_watchers_with_the_new_state() {
    let store: S = Store::new();
    let set = store.set(k("a"), 1);
    let mut a = store.watch("a", set);
    let mut b = store.watch("b", 0);
    let deleted = store.delete("a").unwrap();
    let seen = a.wait(LONG).unwrap();
    assert_eq!((seen.index, seen.entry), (deleted, None));
    let batch = store
        .batch(vec![Op::set(k("a"), 5), Op::set(k("b"), 6)])
        .unwrap();
    assert_eq!(a.wait(LONG).unwrap().index, batch);
    let seen_b = b.wait(LONG).unwrap();
    assert_eq!((seen_b.index, seen_b.entry.unwrap().value), (batch, 6));
    // A batch that only checks a key does not change it: no answer.
    store
        .batch(vec![Op::check_index(k("a"), batch), Op::set(k("c"), 1)])
        .unwrap();
    assert!(a.wait(Duration::from_millis(5)).is_none());
}

#[test]
fn a_prefix_watch_wakes_for_keys_under_it_only() {
    let store: S = Store::new();
    let mut app = store.watch_prefix("app/", 0);
    store.set(k("apple"), 1); // not under "app/"
    store.set(k("other/app/x"), 1);
    assert_eq!(store.watch_counts().1, 0);
    assert!(app.wait(Duration::from_millis(5)).is_none());
    let x = store.set(k("app/x"), 1);
    let listing = app.wait(LONG).unwrap();
    assert_eq!(listing.index, x);
    assert_eq!(listing.entries.len(), 1);
    // A delete under the prefix is a change of the prefix: its index is the listing's.
    let gone = store.delete("app/x").unwrap();
    let listing = app.wait(LONG).unwrap();
    assert_eq!((listing.index, listing.entries.len()), (gone, 0));
    // A key watch and a prefix watch of the same key are both woken; "" watches everything.
    let mut all = store.watch_prefix("", listing.index);
    let mut key = store.watch("app/y", 0);
    let y = store.set(k("app/y"), 2);
    assert_eq!(app.wait(LONG).unwrap().index, y);
    assert_eq!(all.wait(LONG).unwrap().index, y);
    assert_eq!(key.wait(LONG).unwrap().index, y);
    // Multi-byte characters: a prefix length inside a character is skipped, not a panic.
    let mut accented = store.watch_prefix("é", 0);
    let e = store.set(k("éa"), 1);
    store.set(k("e"), 1);
    assert_eq!(accented.wait(LONG).unwrap().index, e);
}

#[test]
fn an_expiry_is_a_change_that_a_blocking_wait_makes_itself() {
    let store: S = Store::new();
    let set = store.set_with_ttl(k("t"), 1, Duration::from_millis(30));
    let mut w = store.watch("t", set);
    let started = Instant::now();
    let seen = w.wait(LONG).expect("the expiry answers");
    assert!(seen.entry.is_none());
    assert!(seen.index > set, "the expiry is a delete at its own index");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_eviction_wakes_the_evicted_keys_watcher() {
    let store: Store<String, u32> = Store::builder().max_entries(1).build();
    let first = store.set(k("a"), 1);
    let mut w = store.watch("a", first);
    for i in 0..50 {
        store.set(format!("b{i}"), i);
    }
    let seen = w.wait(LONG).expect("a was evicted");
    assert!(seen.entry.is_none() && seen.index > first);
}

struct Flag(AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn the_changed_future_needs_no_runtime_and_wakes_its_waker() {
    let store: S = Store::new();
    let mut w = store.watch("a", 0);
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(w.changed());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    store.set(k("other"), 1);
    assert!(
        !flag.0.load(Ordering::SeqCst),
        "another key's write woke the task"
    );
    let index = store.set(k("a"), 1);
    assert!(
        flag.0.load(Ordering::SeqCst),
        "the key's write did not wake the task"
    );
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(seen) => assert_eq!(seen.index, index),
        Poll::Pending => panic!("woken but not ready"),
    }
}

/// A watch created while another thread writes the key, many times over: each either sees the
/// write at once or is woken by it (a miss would hang until the timeout, and fail).
#[test]
fn a_watch_racing_a_write_never_misses_it() {
    let store: S = Store::new();
    for round in 0..300u32 {
        let key = format!("k{round}");
        let before = store.set(key.clone(), 0);
        thread::scope(|s| {
            let writer = s.spawn(|| store.set(key.clone(), 1));
            let mut w = store.watch(key.as_str(), before);
            let seen = w.wait(LONG).expect("a watch missed a write");
            let written = writer.join().unwrap();
            assert_eq!(seen.index, written);
        });
    }
}

#[test]
fn the_feed_holds_every_change_in_index_order_with_batches_as_one() {
    let store = history();
    let a = store.set(k("a"), 1);
    let b = store
        .batch(vec![Op::set(k("b"), 2), Op::delete(k("a"))])
        .unwrap();
    assert!(store.set_cas(k("c"), 3, 99).is_err()); // no index taken, nothing fed
    let c = store.delete("b").unwrap();
    let changes = store.changes(0).unwrap();
    let indices: Vec<u64> = changes.iter().map(|c| c.index()).collect();
    assert_eq!(indices, [a, b, c]);
    match &*changes[1] {
        Change::Batch { index, writes } => {
            assert_eq!(*index, b);
            assert_eq!(writes.len(), 2);
            assert_eq!(writes[0].0, "a");
            assert!(writes[0].1.is_none());
            assert_eq!(writes[1].1.as_ref().unwrap().value, 2);
        }
        other => panic!("not a batch: {other:?}"),
    }
    assert_eq!(store.changes(b).unwrap().len(), 1);
    assert!(store.changes(c).unwrap().is_empty());
    assert!(store.changes(c + 100).unwrap().is_empty());
}

#[test]
fn a_compacted_history_says_so_and_answers_from_its_oldest() {
    let store: S = Store::builder()
        .history(HistoryLimits {
            max_changes: 10,
            ..HistoryLimits::default()
        })
        .build();
    let indices: Vec<u64> = (0..25).map(|i| store.set(format!("k{i}"), i)).collect();
    let Err(Compacted { oldest }) = store.changes(0) else {
        panic!("25 changes in a history of 10");
    };
    assert_eq!(oldest, indices[14]);
    let kept = store.changes(oldest).unwrap();
    assert_eq!(kept.len(), 10);
    assert_eq!(kept[0].index(), indices[15]);
    // A store without a history: everything before now is compacted.
    let plain: S = Store::new();
    let i = plain.set(k("a"), 1);
    assert_eq!(plain.changes(0), Err(Compacted { oldest: i }));
    assert!(plain.changes(i).unwrap().is_empty());
}

#[test]
fn expiries_and_evictions_are_deletes_in_the_feed() {
    let clock = Arc::new(caskv::ManualClock::new(1_000_000));
    let store: S = Store::builder()
        .clock(clock.clone())
        .max_entries(2)
        .history(HistoryLimits::default())
        .build();
    store.set_with_ttl(k("t"), 1, Duration::from_secs(1));
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.purge_expired(), 1);
    for i in 0..5 {
        store.set(format!("e{i}"), i);
    }
    let changes = store.changes(0).unwrap();
    let deletes = changes
        .iter()
        .filter(|c| matches!(&***c, Change::Delete { .. }))
        .count();
    assert_eq!(deletes, 1 + 3, "one expiry and three evictions");
    let indices: Vec<u64> = changes.iter().map(|c| c.index()).collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]));
}

/// Writers racing on few keys (so CASes are lost and indices skipped) while a reader follows
/// the feed: every read is gap-free against the final feed, the final feed holds exactly the
/// indices the writes returned, and every snapshot is a prefix of it.
#[test]
fn the_feed_under_contention_is_gap_free_and_every_read_is_a_prefix() {
    let store = history();
    let done = AtomicBool::new(false);
    let (returned, snapshots) = thread::scope(|s| {
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let store = &store;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..3_000u32 {
                        let key = format!("k{}", i % 4);
                        let index = match i % 5 {
                            0 => store.delete(&key).ok(),
                            1 => store
                                .batch(vec![
                                    Op::set(format!("k{}", (i + 1) % 4), t),
                                    Op::set(format!("k{}", (i + 2) % 4), t),
                                ])
                                .ok(),
                            _ => Some(store.set(key, t)),
                        };
                        mine.extend(index);
                    }
                    mine
                })
            })
            .collect();
        let reader = s.spawn(|| {
            let mut snapshots = Vec::new();
            let mut after = 0;
            let mut followed = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let next = store.changes(after).unwrap();
                if let Some(last) = next.last() {
                    after = last.index();
                }
                followed.extend(next.iter().map(|c| c.index()));
                snapshots.push(store.changes(0).unwrap().len());
            }
            followed.extend(store.changes(after).unwrap().iter().map(|c| c.index()));
            (followed, snapshots)
        });
        let returned: BTreeSet<u64> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        done.store(true, Ordering::SeqCst);
        let (followed, snapshots) = reader.join().unwrap();
        let fed: Vec<u64> = store
            .changes(0)
            .unwrap()
            .iter()
            .map(|c| c.index())
            .collect();
        assert_eq!(
            followed, fed,
            "following the feed gave a different sequence"
        );
        (returned, (fed, snapshots))
    });
    let (fed, snapshots) = snapshots;
    assert!(fed.windows(2).all(|w| w[0] < w[1]), "not in index order");
    let fed_set: BTreeSet<u64> = fed.iter().copied().collect();
    assert_eq!(fed_set, returned, "the feed and the writes disagree");
    assert!(snapshots.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_batch_that_creates_a_watched_key_wakes_it() {
    let store: S = Store::new();
    store.set(k("before"), 0);
    let mut w = store.watch("new", 1);
    let batch = store
        .batch(vec![Op::set(k("new"), 1), Op::set(k("x"), 2)])
        .unwrap();
    let seen = w
        .wait(Duration::from_secs(2))
        .expect("the batch woke nobody");
    assert_eq!(seen.index, batch);
}

/// A write under the prefix that took an index at or below the one the watch waits past (as a
/// write to another key that took a lower index and landed later does) still answers it.
#[test]
fn a_prefix_watch_answers_a_write_that_lands_under_an_index_already_seen() {
    let store: S = Store::new();
    store.set(k("app/a"), 1);
    let mut w = store.watch_prefix("app/", 1_000);
    assert!(w.wait(Duration::from_millis(5)).is_none());
    let x = store.set(k("app/x"), 2);
    let listing = w.wait(LONG).expect("a write under the prefix answers");
    assert!(x < 1_000);
    assert_eq!(listing.entries.len(), 2);
    assert_eq!(w.after(), 1_000, "after never goes back");
    assert!(
        w.wait(Duration::from_millis(5)).is_none(),
        "answered twice for one write"
    );
}
