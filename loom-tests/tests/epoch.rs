//! loom models of the epoch collector (`src/epoch/`): pins, retires, advances and frees
//! racing, with a loom `UnsafeCell` standing in for each node, so a free that is not ordered
//! after a pinned reader's read of the node is a causality violation loom reports.
//!
//! Under loom the fences are the symmetric `SeqCst` ones (loom cannot model `membarrier`; the
//! asymmetric argument is in `src/epoch/mod.rs`). Run with `ci/loom.sh`.
#![cfg(caskv_loom)]

use caskv::epoch::{Collector, Handle};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

mod support;
use support::model;

/// A node: a value a reader reads and the free overwrites.
struct Node(UnsafeCell<u64>);

fn node(v: u64) -> u64 {
    Box::into_raw(Box::new(Node(UnsafeCell::new(v)))).expose_provenance() as u64
}

/// Reads the node of `word`.
///
/// # Safety
/// `word` came from `node` and is not freed yet (the caller is pinned since it loaded it).
unsafe fn read(word: u64) -> u64 {
    let node = std::ptr::with_exposed_provenance::<Node>(word as usize);
    // SAFETY: the caller's contract.
    unsafe { (*node).0.with(|v| *v) }
}

/// Frees the node of `word`, writing to it first so loom checks the write against reads.
unsafe fn free(word: u64) {
    let node = std::ptr::with_exposed_provenance_mut::<Node>(word as usize);
    // SAFETY: made by `node`, freed once (the collector's contract).
    let node = unsafe { Box::from_raw(node) };
    node.0.with_mut(|v| *v = 0);
}

/// Under one pin of `h`, installs a node holding `v` in `slot` and retires the one it replaces.
fn replace(h: &Handle<'_>, slot: &AtomicU64, v: u64) {
    let g = h.pin();
    let old = slot.swap(node(v), Ordering::AcqRel);
    // SAFETY: unlinked above, retired once.
    unsafe { g.retire(old, free) };
}

/// Reads the node `slot` holds; the caller is pinned.
fn read_slot(slot: &AtomicU64) -> u64 {
    let w = slot.load(Ordering::Acquire);
    // SAFETY: loaded under the caller's pin, which keeps the node from being freed.
    unsafe { read(w) }
}

/// Frees the node `slot` holds at the end of a model (no thread can reach it any more).
fn free_last(slot: &AtomicU64) {
    // SAFETY: every handle and reader is gone; the node was never retired.
    unsafe { free(slot.load(Ordering::Relaxed)) };
}

/// A thread that registers on `c`, pins, and runs `read` on `slot` under that pin.
fn spawn_pinned<T: Send + 'static>(
    c: &Arc<Collector>,
    slot: &Arc<AtomicU64>,
    read: fn(&AtomicU64) -> T,
) -> thread::JoinHandle<T> {
    let (c, slot) = (c.clone(), slot.clone());
    thread::spawn(move || {
        let h = c.register_handle();
        let _pin = h.pin();
        read(&slot)
    })
}

/// A reader pinned before the writer's unlink reads the old node; the writer retires it and
/// flushes (advancing as far as it can, then freeing what expired). Whatever the interleaving,
/// the free never races the read, and the reader sees a live value (1 or 2, never 0).
#[test]
fn a_free_never_races_a_pinned_read() {
    model(|| {
        let c = Arc::new(Collector::new());
        let slot = Arc::new(AtomicU64::new(node(1)));
        let reader = spawn_pinned(&c, &slot, read_slot);
        let h = c.register_handle();
        replace(&h, &slot, 2);
        h.flush();
        let v = reader.join().unwrap();
        assert!(v == 1 || v == 2, "read {v}");
        drop(h);
        free_last(&slot);
    });
}

/// Two writers retire in turn while a reader reads twice under one pin: the advance must not
/// pass the reader's epoch by two while it is pinned.
#[test]
fn a_long_pin_holds_back_every_later_free() {
    model(|| {
        let c = Arc::new(Collector::new());
        let slot = Arc::new(AtomicU64::new(node(1)));
        let reader = spawn_pinned(&c, &slot, |slot| (read_slot(slot), read_slot(slot)));
        let h = c.register_handle();
        for v in 2..4 {
            replace(&h, &slot, v);
            h.flush();
        }
        let (va, vb) = reader.join().unwrap();
        assert!(va != 0 && vb != 0 && va <= vb, "read {va} then {vb}");
        assert_eq!(h.flush(), 0, "every node is freed once the reader is gone");
        drop(h);
        free_last(&slot);
    });
}

/// A thread that retires and exits while a reader may be pinned leaves what it retired to the
/// collector's orphans (it frees nothing as it exits); another thread's flush adopts them and
/// frees them once the reader is gone, exactly once.
#[test]
fn an_exited_writers_garbage_is_freed_once_by_another_thread() {
    model(|| {
        let c = Arc::new(Collector::new());
        let slot = Arc::new(AtomicU64::new(node(1)));
        let writer = {
            let (c, slot) = (c.clone(), slot.clone());
            thread::spawn(move || {
                let h = c.register_handle();
                replace(&h, &slot, 2);
            })
        };
        let reader = c.register_handle();
        {
            let _pin = reader.pin();
            let v = read_slot(&slot);
            assert!(v == 1 || v == 2);
        }
        writer.join().unwrap();
        let next = c.register_handle();
        assert_eq!(next.flush() + reader.flush(), 0);
        drop((next, reader));
        free_last(&slot);
    });
}
