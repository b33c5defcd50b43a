//! loom models of watches and the change feed, run against the real `Store`.
//!
//! Claims checked:
//! - **No waiter is missed**: a watch registered while another thread writes its key (or a key
//!   under its prefix) either sees the write at its first look or is woken by it. A miss would
//!   leave the watcher asleep on its condition variable with no writer left: loom reports the
//!   deadlock (under loom a timed wait is an untimed one).
//! - **A write to another key wakes nobody** (the wake-up counter stays 0).
//! - **The feed is gap-free and ordered, and every read is a prefix of the final feed**, with
//!   an index skipped by a lost CAS in flight: a reader never sees an index before every index
//!   below it was applied or skipped.
//!
//! Run with `RUSTFLAGS="--cfg caskv_loom" cargo test -p caskv-loom-tests --release --test
//! watch` (see `ci/loom.sh`).
#![cfg(caskv_loom)]

use std::time::Duration;

use caskv::{HistoryLimits, Store};
use loom::sync::Arc;
use loom::thread;

mod support;
use support::model;

type S = Store<&'static str, u32>;

const LONG: Duration = Duration::from_secs(3600);

#[test]
fn a_key_watch_racing_a_write_sees_it_or_is_woken() {
    model(|| {
        let store: Arc<S> = Arc::new(Store::new());
        let writer = {
            let store = store.clone();
            thread::spawn(move || store.set("k", 1))
        };
        let mut watch = store.watch(&"k", 0);
        let seen = watch
            .wait(LONG)
            .expect("a timed wait is untimed under loom");
        let written = writer.join().unwrap();
        assert_eq!(seen.index, written);
        assert_eq!(seen.entry.map(|e| e.value), Some(1));
    });
}

#[test]
fn a_prefix_watch_racing_a_write_under_it_sees_it_or_is_woken() {
    model(|| {
        let store: Arc<S> = Arc::new(Store::new());
        let writer = {
            let store = store.clone();
            thread::spawn(move || {
                store.set("other", 0);
                store.set("app/k", 1)
            })
        };
        let mut watch = store.watch_prefix("app/", 0);
        let listing = watch
            .wait(LONG)
            .expect("a timed wait is untimed under loom");
        let written = writer.join().unwrap();
        assert_eq!(listing.index, written);
    });
}

#[test]
fn a_write_to_another_key_wakes_nobody() {
    model(|| {
        let store: Arc<S> = Arc::new(Store::new());
        let watch = store.watch(&"a", 0);
        let writer = {
            let store = store.clone();
            thread::spawn(move || {
                store.set("b", 1);
            })
        };
        writer.join().unwrap();
        assert_eq!(store.watch_counts(), (1, 0));
        drop(watch);
    });
}

#[test]
fn feed_reads_are_gap_free_prefixes_with_a_lost_cas_in_flight() {
    model(|| {
        let store: Arc<S> = Arc::new(Store::builder().history(HistoryLimits::default()).build());
        // Two create-only writes of one key: both may take an index, one loses its claim (a
        // skipped index) and then fails its check.
        let writers: Vec<_> = (0..2)
            .map(|v| {
                let store = store.clone();
                thread::spawn(move || store.set_cas("k", v, 0).ok())
            })
            .collect();
        let seen = store.changes(0).unwrap();
        let won: Vec<u64> = writers
            .into_iter()
            .filter_map(|w| w.join().unwrap())
            .collect();
        assert_eq!(won.len(), 1, "exactly one create-only write wins");
        let fed: Vec<u64> = store
            .changes(0)
            .unwrap()
            .iter()
            .map(|c| c.index())
            .collect();
        assert_eq!(fed, won, "the feed holds exactly the applied write");
        let early: Vec<u64> = seen.iter().map(|c| c.index()).collect();
        assert!(
            fed.starts_with(&early),
            "a read that is not a prefix: {early:?} vs {fed:?}"
        );
    });
}
