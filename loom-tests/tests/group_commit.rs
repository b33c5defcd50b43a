//! loom models of the log's group commit, run against the real `Log` (its lock, condition
//! variables and flusher thread come from `caskv::sync`) over an in-memory segment that
//! records how far it was written and synced (`caskv::persist::model`).
//!
//! The claims checked, in every schedule loom explores:
//! - no waiter is missed: every `wait()` and every `.await` of a `Pending` returns (a waiter
//!   left asleep is a deadlock, which loom reports);
//! - nothing is acknowledged early: when a waiter returns `Ok(ticket)`, the segment has synced
//!   (under `Always`) or been handed (under `EverySec`) every byte up to `ticket`;
//! - a failure reaches every waiter, present and future, as an error, and no round after it
//!   acknowledges anything (under `Always` and `EverySec`);
//! - a future dropped after registering leaves nothing behind that stops the others.
//!
//! Run with `RUSTFLAGS="--cfg caskv_loom" cargo test -p caskv-loom-tests --release --test
//! group_commit` (see `ci/loom.sh`). Each model is small: two writers, the flusher, and the
//! main thread, which drops the log at the end (so the flusher's stop and join are explored
//! too).
#![cfg(caskv_loom)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use caskv::persist::model::{MemoryDisk, ModelLog};
use caskv::persist::FsyncPolicy;
use loom::thread;

mod support;
use support::model;

/// Wakes a model thread parked in [`block_on`].
struct Unpark(thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this model thread, parking between polls until its waker is called (loom's own
/// `block_on` needs its `futures` feature; this is the same loop on loom's park/unpark). A
/// wake-up that never comes is a deadlock loom reports.
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// One writer waiting the async way and one the blocking way (leader/follower), under
/// `Always`: each acknowledgement comes after its bytes were synced, and neither is missed.
#[test]
fn async_and_blocking_writers_are_acknowledged_after_their_sync() {
    model(|| {
        let disk = Arc::new(MemoryDisk::default());
        let log = Arc::new(ModelLog::new(FsyncPolicy::Always, &disk));
        let a = {
            let (log, disk) = (log.clone(), disk.clone());
            thread::spawn(move || {
                let ticket = block_on(log.append(3)).expect("acknowledged");
                assert!(disk.synced() >= ticket, "acknowledged before its sync");
            })
        };
        let b = {
            let (log, disk) = (log.clone(), disk.clone());
            thread::spawn(move || {
                let ticket = log.append(5).wait().expect("acknowledged");
                assert!(disk.synced() >= ticket, "acknowledged before its sync");
            })
        };
        a.join().unwrap();
        b.join().unwrap();
        let end = log.appended();
        drop(log);
        assert!(
            disk.synced() >= end,
            "the log closed without its final flush"
        );
    });
}

/// Two blocking writers under `Always`: whichever finds no round running leads one; the other
/// parks registered with the log and is unparked only by a round that covers it (its own, the
/// flusher's or the other writer's), never before its sync, and never missed.
#[test]
fn two_blocking_writers_park_until_a_round_covers_them() {
    model(|| {
        let disk = Arc::new(MemoryDisk::default());
        let log = Arc::new(ModelLog::new(FsyncPolicy::Always, &disk));
        let a = {
            let (log, disk) = (log.clone(), disk.clone());
            thread::spawn(move || {
                let ticket = log.append(3).wait().expect("acknowledged");
                assert!(disk.synced() >= ticket, "acknowledged before its sync");
            })
        };
        let ticket = log.append(5).wait().expect("acknowledged");
        assert!(disk.synced() >= ticket, "acknowledged before its sync");
        a.join().unwrap();
    });
}

/// Two async writers under `Always`: only the flusher syncs, and it serves both (in one round
/// or two) before either returns.
#[test]
fn two_async_writers_are_woken_by_the_flusher() {
    model(|| {
        let disk = Arc::new(MemoryDisk::default());
        let log = Arc::new(ModelLog::new(FsyncPolicy::Always, &disk));
        let writers: Vec<_> = [2, 4]
            .into_iter()
            .map(|len| {
                let (log, disk) = (log.clone(), disk.clone());
                thread::spawn(move || {
                    let ticket = block_on(log.append(len)).expect("acknowledged");
                    assert!(disk.synced() >= ticket, "acknowledged before its sync");
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
    });
}

/// Under `EverySec` an async waiter needs its bytes written, not synced: it writes them itself
/// when no round runs, or the flusher does; either way not before they were handed over.
#[test]
fn everysec_acknowledges_after_the_write() {
    model(|| {
        let disk = Arc::new(MemoryDisk::default());
        let log = Arc::new(ModelLog::new(FsyncPolicy::EverySec, &disk));
        let a = {
            let (log, disk) = (log.clone(), disk.clone());
            thread::spawn(move || {
                let ticket = block_on(log.append(3)).expect("acknowledged");
                assert!(disk.written() >= ticket, "acknowledged before its write");
            })
        };
        let ticket = block_on(log.append(5)).expect("acknowledged");
        assert!(disk.written() >= ticket, "acknowledged before its write");
        a.join().unwrap();
    });
}

/// The disk fails: the async and the blocking waiter both get the error (none hangs), and so
/// does a write appended after the failure.
#[test]
fn a_failed_sync_reaches_every_waiter() {
    model(|| {
        let disk = Arc::new(MemoryDisk::default());
        disk.fail_from_now();
        let log = Arc::new(ModelLog::new(FsyncPolicy::Always, &disk));
        let a = {
            let log = log.clone();
            thread::spawn(move || {
                assert!(
                    block_on(log.append(3)).is_err(),
                    "acknowledged on a failed disk"
                );
            })
        };
        assert!(
            log.append(5).wait().is_err(),
            "acknowledged on a failed disk"
        );
        a.join().unwrap();
        assert!(
            block_on(log.append(1)).is_err(),
            "a later write was acknowledged"
        );
        assert!(
            log.append(1).wait().is_err(),
            "a later write was acknowledged"
        );
    });
}

/// Under `EverySec`, two async writers on a failing disk: a writer that saw the log healthy
/// before another writer's round failed must not then lead a round of its own, which would
/// publish `written` over the bytes the failed round lost (found in review: the poller read
/// `failed` before taking the lock).
#[test]
fn everysec_after_a_failed_round_acknowledges_nothing() {
    model(|| {
        let disk = Arc::new(MemoryDisk::default());
        disk.fail_from_now();
        let log = Arc::new(ModelLog::new(FsyncPolicy::EverySec, &disk));
        let a = {
            let (log, disk) = (log.clone(), disk.clone());
            thread::spawn(move || {
                if let Ok(ticket) = block_on(log.append(3)) {
                    panic!(
                        "acknowledged on a failed disk: ticket {ticket}, written {}",
                        disk.written()
                    );
                }
            })
        };
        if let Ok(ticket) = block_on(log.append(5)) {
            panic!(
                "acknowledged on a failed disk: ticket {ticket}, written {}",
                disk.written()
            );
        }
        a.join().unwrap();
    });
}

/// A future polled once (so registered with the log) and then dropped, racing an async
/// writer: the writer is still woken, and the log closes.
#[test]
fn a_dropped_future_is_harmless() {
    model(|| {
        let disk = Arc::new(MemoryDisk::default());
        let log = Arc::new(ModelLog::new(FsyncPolicy::Always, &disk));
        let a = {
            let (log, disk) = (log.clone(), disk.clone());
            thread::spawn(move || {
                let ticket = block_on(log.append(3)).expect("acknowledged");
                assert!(disk.synced() >= ticket, "acknowledged before its sync");
            })
        };
        {
            let mut dropped = pin!(log.append(5));
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(ticket) = dropped.as_mut().poll(&mut cx) {
                assert!(disk.synced() >= ticket.expect("acknowledged"));
            }
        }
        a.join().unwrap();
        let end = log.appended();
        drop(log);
        assert!(
            disk.synced() >= end,
            "the final flush missed the dropped write"
        );
    });
}
