//! Group commit through the public API: many async writers awaiting their `Pending` futures
//! at once on a real data directory (no blocking pool), every one acknowledged and every one
//! recovered after reopening.

use std::sync::Arc;
use std::time::Duration;

use caskv::persist::{FsyncPolicy, Options};

type Db = caskv::Db<String, String>;

const WRITERS: usize = 64;
const WRITES_EACH: usize = 20;

/// `WRITERS` tasks on a two-thread runtime, each doing `WRITES_EACH` sets one after another,
/// awaiting each before the next; returns every acknowledged (key, index, value).
async fn write_concurrently(db: &Arc<Db>) -> Vec<(String, u64, String)> {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..WRITES_EACH {
                    let (key, value) = (format!("w{w}-{i}"), format!("{w}:{i}"));
                    let pending = db.set(key.clone(), value.clone()).unwrap();
                    let index = pending.await.expect("acknowledged");
                    acked.push((key, index, value));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked
}

fn check_recovered(dir: &std::path::Path, acked: &[(String, u64, String)]) {
    let db: Db = Db::open(dir, Options::default()).unwrap();
    for (key, index, value) in acked {
        let entry = db
            .store()
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} was acknowledged at {index} and lost"));
        assert_eq!(
            (&*entry.value, entry.modify_index),
            (value.as_str(), *index)
        );
    }
}

/// A two-worker runtime with timers, as a server runs the writes.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn concurrent_async_writers_are_all_acknowledged_and_recovered(policy: FsyncPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let db = Arc::new(Db::open(dir.path(), Options::default().fsync(policy)).unwrap());
    let acked = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), write_concurrently(&db))
            .await
            .expect("every writer was acknowledged within 60 s")
    });
    assert_eq!(acked.len(), WRITERS * WRITES_EACH);
    drop(db);
    check_recovered(dir.path(), &acked);
}

#[test]
fn concurrent_async_writers_with_fsync_always() {
    concurrent_async_writers_are_all_acknowledged_and_recovered(FsyncPolicy::Always);
}

#[test]
fn concurrent_async_writers_with_fsync_everysec() {
    concurrent_async_writers_are_all_acknowledged_and_recovered(FsyncPolicy::EverySec);
}

#[test]
fn concurrent_async_writers_with_fsync_never() {
    concurrent_async_writers_are_all_acknowledged_and_recovered(FsyncPolicy::Never);
}

/// Async and blocking waiters at once: the flusher's rounds and the blocking leaders' rounds
/// share the log, and neither kind of waiter is left behind.
#[test]
fn async_and_blocking_writers_together() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let db = Arc::new(Db::open(dir.path(), Options::default()).unwrap());
    let blocking: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                (0..WRITES_EACH)
                    .map(|i| {
                        let (key, value) = (format!("t{t}-{i}"), format!("{t}:{i}"));
                        let index = db.set(key.clone(), value.clone()).unwrap().wait().unwrap();
                        (key, index, value)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), write_concurrently(&db))
            .await
            .expect("every async writer was acknowledged within 60 s")
    });
    for t in blocking {
        acked.extend(t.join().unwrap());
    }
    drop(db);
    check_recovered(dir.path(), &acked);
}
