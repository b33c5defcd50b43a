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

/// How a model writer waits for its record.
#[derive(Clone, Copy)]
enum How {
    /// `.await` on the `Pending` (here: polled by [`block_on`]).
    Async,
    /// `Pending::wait` (leader/follower, parked by ticket).
    Blocking,
}

/// A disk (failing from the start when `failing`) and a log over it.
fn setup(policy: FsyncPolicy, failing: bool) -> (Arc<MemoryDisk>, Arc<ModelLog>) {
    let disk = Arc::new(MemoryDisk::default());
    if failing {
        disk.fail_from_now();
    }
    let log = Arc::new(ModelLog::new(policy, &disk));
    (disk, log)
}

/// Appends `len` bytes and waits `how`; the acknowledged ticket, or the log's error.
fn write(log: &ModelLog, len: usize, how: How) -> Result<u64, caskv::StorageError> {
    let pending = log.append(len);
    match how {
        How::Async => block_on(pending),
        How::Blocking => pending.wait(),
    }
}

/// Writes, and checks that the acknowledgement came after the disk had the bytes at the
/// policy's level: synced under `Always`, written under `EverySec`.
fn acknowledged_after_its_bytes(
    disk: &MemoryDisk,
    log: &ModelLog,
    len: usize,
    how: How,
    policy: FsyncPolicy,
) {
    let ticket = write(log, len, how).expect("acknowledged");
    let at = match policy {
        FsyncPolicy::Always => disk.synced(),
        _ => disk.written(),
    };
    assert!(
        at >= ticket,
        "acknowledged at {ticket} before its bytes (disk at {at})"
    );
}

/// Never acknowledged: the disk fails.
fn refused(disk: &MemoryDisk, log: &ModelLog, len: usize, how: How) {
    if let Ok(ticket) = write(log, len, how) {
        panic!(
            "acknowledged on a failed disk: ticket {ticket}, written {}",
            disk.written()
        );
    }
}

/// Runs `f` on a model thread with clones of the disk and the log.
fn spawn(
    disk: &Arc<MemoryDisk>,
    log: &Arc<ModelLog>,
    f: impl FnOnce(&MemoryDisk, &ModelLog) + Send + 'static,
) -> thread::JoinHandle<()> {
    let (disk, log) = (disk.clone(), log.clone());
    thread::spawn(move || f(&disk, &log))
}

/// Two writers under `policy`, waiting `a` and `b`: each acknowledgement comes after its bytes
/// reached the policy's level, neither is missed, and the log closes with a final flush.
fn two_writers(policy: FsyncPolicy, a: How, b: How) {
    model(move || {
        let (disk, log) = setup(policy, false);
        let first = spawn(&disk, &log, move |disk, log| {
            acknowledged_after_its_bytes(disk, log, 3, a, policy)
        });
        acknowledged_after_its_bytes(&disk, &log, 5, b, policy);
        first.join().unwrap();
        let end = log.appended();
        drop(log);
        assert!(
            disk.synced() >= end,
            "the log closed without its final flush"
        );
    });
}

/// One writer waiting the async way and one the blocking way (leader/follower), under
/// `Always`: each acknowledgement comes after its bytes were synced, and neither is missed.
#[test]
fn async_and_blocking_writers_are_acknowledged_after_their_sync() {
    two_writers(FsyncPolicy::Always, How::Async, How::Blocking);
}

/// Two blocking writers under `Always`: whichever finds no round running leads one; the other
/// parks registered with the log and is unparked only by a round that covers it (its own, the
/// flusher's or the other writer's), never before its sync, and never missed.
#[test]
fn two_blocking_writers_park_until_a_round_covers_them() {
    two_writers(FsyncPolicy::Always, How::Blocking, How::Blocking);
}

/// Two async writers under `Always`: only the flusher syncs, and it serves both (in one round
/// or two) before either returns.
#[test]
fn two_async_writers_are_woken_by_the_flusher() {
    two_writers(FsyncPolicy::Always, How::Async, How::Async);
}

/// Under `EverySec` an async waiter needs its bytes written, not synced: it writes them itself
/// when no round runs, or the flusher does; either way not before they were handed over.
#[test]
fn everysec_acknowledges_after_the_write() {
    two_writers(FsyncPolicy::EverySec, How::Async, How::Async);
}

/// The disk fails: the async and the blocking waiter both get the error (none hangs), and so
/// does a write appended after the failure.
#[test]
fn a_failed_sync_reaches_every_waiter() {
    model(|| {
        let (disk, log) = setup(FsyncPolicy::Always, true);
        let a = spawn(&disk, &log, |disk, log| refused(disk, log, 3, How::Async));
        refused(&disk, &log, 5, How::Blocking);
        a.join().unwrap();
        refused(&disk, &log, 1, How::Async);
        refused(&disk, &log, 1, How::Blocking);
    });
}

/// Under `EverySec`, two async writers on a failing disk: a writer that saw the log healthy
/// before another writer's round failed must not then lead a round of its own, which would
/// publish `written` over the bytes the failed round lost (found in review: the poller read
/// `failed` before taking the lock).
#[test]
fn everysec_after_a_failed_round_acknowledges_nothing() {
    model(|| {
        let (disk, log) = setup(FsyncPolicy::EverySec, true);
        let a = spawn(&disk, &log, |disk, log| refused(disk, log, 3, How::Async));
        refused(&disk, &log, 5, How::Async);
        a.join().unwrap();
    });
}

/// A future polled once (so registered with the log) and then dropped, racing an async
/// writer: the writer is still woken, and the log closes.
#[test]
fn a_dropped_future_is_harmless() {
    model(|| {
        let (disk, log) = setup(FsyncPolicy::Always, false);
        let a = spawn(&disk, &log, |disk, log| {
            acknowledged_after_its_bytes(disk, log, 3, How::Async, FsyncPolicy::Always)
        });
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
