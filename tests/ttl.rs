//! Time to live: an expired version reads as absent at once, and its expiry is a delete at a
//! fresh index that CAS, batches, listings, the journal and the log all see as one. Time is a
//! `ManualClock` (no sleeps), except where a real data directory is reopened.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caskv::persist::Options;
use caskv::{Db, Error, Journal, ManualClock, Mutation, Op, Store};

/// 2026-11-30T00:00:00Z, in ms.
const START: u64 = 1_796_000_000_000;

fn clocked() -> (Arc<ManualClock>, Store<String, u32>) {
    let clock = Arc::new(ManualClock::new(START));
    let store = Store::builder().clock(clock.clone()).build();
    (clock, store)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// One mutation a journal received: key, "set" or "delete", index, deadline.
type Received = (String, &'static str, u64, Option<SystemTime>);

/// What a journal received, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<Received>>);

impl Journal<String, u32> for Recorded {
    fn record(&self, m: Mutation<'_, String, u32>) -> u64 {
        let mut log = self.0.lock().unwrap();
        match m {
            Mutation::Set { key, entry } => {
                log.push((key.clone(), "set", entry.modify_index, entry.expires_at()))
            }
            Mutation::Delete { key, index } => log.push((key.clone(), "delete", index, None)),
            Mutation::Batch { index, writes } => {
                for (k, e) in writes {
                    let kind = if e.is_some() { "set" } else { "delete" };
                    log.push(((*k).clone(), kind, index, e.and_then(|e| e.expires_at())));
                }
            }
            _ => unreachable!("no other mutation kinds exist"),
        }
        log.len() as u64
    }
}

#[test]
fn a_version_reads_as_absent_from_its_deadline_on() {
    let (clock, store) = clocked();
    let index = store.set_with_ttl("k".into(), 1, secs(30));
    let entry = store.get("k").unwrap();
    assert_eq!(entry.modify_index, index);
    assert_eq!(
        entry.expires_at(),
        Some(UNIX_EPOCH + Duration::from_millis(START + 30_000))
    );
    clock.advance(Duration::from_millis(29_999));
    assert!(store.get("k").is_some());
    assert!(store.contains_key("k"));
    clock.advance(Duration::from_millis(1));
    assert!(store.get("k").is_none());
    assert!(!store.contains_key("k"));
    assert!(store.get_with("k", |_| ()).is_none());
    assert!(store.pin().get("k").is_none());
    assert!(store.keys().is_empty());
    assert!(store.entries().is_empty());
    assert_eq!(store.len(), 0);
    assert_eq!(store.get_many(&["k".to_string()]).unwrap(), [None]);
}

#[test]
fn an_expiry_is_a_delete_at_its_own_index_before_the_write_that_meets_it() {
    let clock = Arc::new(ManualClock::new(START));
    let journal = Arc::new(Recorded::default());
    let store: Store<String, u32> = Store::builder()
        .clock(clock.clone())
        .build_journaled(Box::new(journal.clone()));
    let first = store.set_with_ttl("k".into(), 1, secs(1));
    clock.advance(secs(1));
    let again = store.set("k".into(), 2);
    let log = journal.0.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!((log[0].1, log[0].2), ("set", first));
    assert!(log[0].3.is_some());
    let (_, kind, expired_at, _) = log[1];
    assert_eq!(kind, "delete");
    assert!(first < expired_at && expired_at < again, "{log:?}");
    assert_eq!((log[2].1, log[2].2, log[2].3), ("set", again, None));
    // The key was created again: a new create_index.
    let e = store.get("k").unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, e.expires_at()),
        (again, again, None)
    );
}

#[test]
fn cas_sees_an_expired_key_as_absent() {
    let (clock, store) = clocked();
    let lease = store
        .set_cas_with_ttl("leader".into(), 1, 0, secs(10))
        .unwrap();
    // Renewed before the deadline: a CAS on the index, with a new TTL.
    clock.advance(secs(9));
    let renewed = store
        .set_cas_with_ttl("leader".into(), 1, lease, secs(10))
        .unwrap();
    assert!(store
        .set_cas_with_ttl("leader".into(), 2, 0, secs(10))
        .unwrap_err()
        .is_conflict());
    clock.advance(secs(10));
    // Expired: the old index matches nothing, and create-only succeeds.
    assert!(matches!(
        store.set_cas("leader".into(), 2, renewed),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.delete_cas("leader", renewed),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(store.delete("leader"), Err(Error::NotFound(_))));
    let taken = store.set_cas("leader".into(), 2, 0).unwrap();
    assert!(taken > renewed + 1, "the expiry took an index in between");
    assert!(store
        .compare_and_set("leader".into(), Some(&2), None)
        .is_ok());
}

#[test]
fn every_write_sets_the_ttl_afresh_and_the_default_applies_to_writes_that_name_none() {
    let clock = Arc::new(ManualClock::new(START));
    let store: Store<String, u32> = Store::builder()
        .clock(clock.clone())
        .default_ttl(secs(60))
        .build();
    store.set("plain".into(), 1);
    store.set_with_ttl("short".into(), 1, secs(5));
    store.set_with_ttl("forever".into(), 1, Duration::ZERO);
    store
        .batch(vec![Op::set("batched".to_string(), 1)])
        .unwrap();
    store
        .update("updated".to_string(), |v| v.copied().unwrap_or(0) + 1)
        .unwrap();
    let at = |k: &str| store.get(k).unwrap().expires_at();
    let minute = Some(UNIX_EPOCH + Duration::from_millis(START + 60_000));
    assert_eq!(at("plain"), minute);
    assert_eq!(at("batched"), minute);
    assert_eq!(at("updated"), minute);
    assert_eq!(at("forever"), None);
    assert_eq!(
        at("short"),
        Some(UNIX_EPOCH + Duration::from_millis(START + 5_000))
    );
    clock.advance(secs(59));
    // A write that names no TTL gets the default afresh.
    store.set("plain".into(), 2);
    clock.advance(secs(1));
    assert_eq!(store.keys(), ["forever", "plain"]);

    // Without a default, a plain write clears a TTL.
    let (clock, store) = clocked();
    store.set_with_ttl("k".into(), 1, secs(1));
    store.set("k".into(), 2);
    clock.advance(secs(2));
    assert_eq!(store.get("k").unwrap().value, 2);
}

#[test]
fn batches_see_expired_keys_as_absent_and_delete_them_first() {
    let clock = Arc::new(ManualClock::new(START));
    let journal = Arc::new(Recorded::default());
    let store: Store<String, u32> = Store::builder()
        .clock(clock.clone())
        .build_journaled(Box::new(journal.clone()));
    let a = store.set_with_ttl("a".into(), 1, secs(1));
    store.set("b".into(), 1);
    clock.advance(secs(1));
    // The expired version matches neither its index nor presence.
    let err = store
        .batch(vec![
            Op::check_index("a".to_string(), a),
            Op::set("b".to_string(), 2),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::BatchConflict(_)), "{err:?}");
    let index = store
        .batch(vec![
            Op::check_index("a".to_string(), 0),
            Op::set("b".to_string(), 3),
        ])
        .unwrap();
    assert_eq!(store.get("b").unwrap().modify_index, index);
    let log = journal.0.lock().unwrap().clone();
    let deletes: Vec<_> = log.iter().filter(|e| e.1 == "delete").collect();
    assert_eq!(deletes.len(), 1, "{log:?}");
    assert_eq!(deletes[0].0, "a");
    assert!(deletes[0].2 > a);
}

#[test]
fn purge_deletes_each_expired_version_once() {
    let clock = Arc::new(ManualClock::new(START));
    let journal = Arc::new(Recorded::default());
    let store: Store<String, u32> = Store::builder()
        .clock(clock.clone())
        .build_journaled(Box::new(journal.clone()));
    for i in 0..100 {
        store.set_with_ttl(format!("t{i}"), i, secs(1 + u64::from(i % 2)));
        store.set(format!("p{i}"), i);
    }
    assert_eq!(store.purge_expired(), 0);
    clock.advance(secs(1));
    assert_eq!(store.purge_expired(), 50);
    assert_eq!(store.purge_expired(), 0);
    assert_eq!(store.len(), 150);
    clock.advance(secs(1));
    assert_eq!(store.purge_expired(), 50);
    assert_eq!(store.len(), 100);
    let deletes = journal
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.1 == "delete")
        .count();
    assert_eq!(deletes, 100);
}

#[test]
fn racing_writers_and_a_moving_clock_keep_each_keys_indices_increasing() {
    let clock = Arc::new(ManualClock::new(START));
    let journal = Arc::new(Recorded::default());
    let store: Arc<Store<String, u32>> = Arc::new(
        Store::builder()
            .clock(clock.clone())
            .build_journaled(Box::new(journal.clone())),
    );
    let rounds = if cfg!(miri) { 20 } else { 2_000 };
    std::thread::scope(|s| {
        for t in 0..3u32 {
            let store = &store;
            s.spawn(move || {
                for i in 0..rounds {
                    let key = format!("k{}", i % 4);
                    match (t + i) % 5 {
                        0 => drop(store.set_with_ttl(key, i, Duration::from_millis(3))),
                        1 => drop(store.set_cas_with_ttl(key, i, 0, Duration::from_millis(2))),
                        2 => drop(store.batch(vec![Op::set(key, i), Op::delete("k9".into())])),
                        3 => drop(store.purge_expired()),
                        _ => drop(store.get(&key)),
                    }
                }
            });
        }
        s.spawn(|| {
            for _ in 0..rounds {
                clock.advance(Duration::from_millis(1));
                std::thread::yield_now();
            }
        });
    });
    // Per key, the journal saw strictly increasing indices, and never two deletes in a row
    // (an expiry deletes a present version only).
    let log = journal.0.lock().unwrap();
    let mut last: std::collections::HashMap<&str, (u64, &str)> = Default::default();
    for (key, kind, index, _) in log.iter() {
        if let Some(&(prev, prev_kind)) = last.get(key.as_str()) {
            assert!(*index > prev, "{key}: {index} after {prev}");
            assert!(
                !(*kind == "delete" && prev_kind == "delete"),
                "{key}: two deletes in a row"
            );
        }
        last.insert(key, (*index, kind));
    }
}

#[test]
fn a_deadline_survives_a_restart_and_one_that_passed_meanwhile_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (kept_at, short) = {
        let db: Db<String, Vec<u8>> = Db::open(dir.path(), Options::default()).unwrap();
        db.set_with_ttl("kept".into(), b"v".to_vec(), secs(3600))
            .unwrap()
            .wait()
            .unwrap();
        let short = db
            .set_cas_with_ttl("short".into(), b"v".to_vec(), 0, Duration::from_millis(1))
            .unwrap()
            .wait()
            .unwrap();
        db.batch(vec![Op::set("plain".to_string(), b"p".to_vec())])
            .unwrap()
            .wait()
            .unwrap();
        (db.store().get("kept").unwrap().expires_at(), short)
    };
    assert!(kept_at.is_some());
    // The 1 ms deadline is past by the time the directory is opened again.
    std::thread::sleep(Duration::from_millis(5));
    let db: Db<String, Vec<u8>> = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(db.store().get("kept").unwrap().expires_at(), kept_at);
    assert!(db.store().get("short").is_none());
    assert_eq!(db.store().get("plain").unwrap().expires_at(), None);
    // Creating the key again gets an index above everything before the restart.
    let again = db
        .set_cas("short".into(), b"w".to_vec(), 0)
        .unwrap()
        .wait()
        .unwrap();
    assert!(again > short);
    // A snapshot keeps the deadline too.
    db.snapshot().unwrap();
    drop(db);
    let db: Db<String, Vec<u8>> = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(db.store().get("kept").unwrap().expires_at(), kept_at);
}
