//! The one place that names the concurrency primitives.
//!
//! Under `--cfg caskv_loom` (with the `loom` feature) every atomic, lock, `Arc` and spin-wait
//! below comes from [loom], so the loom models in `loom-tests/` run the real cell, batch,
//! table, collector and group-commit code. Every module of those protocols (`cell`, `table`,
//! `engine`, `batch`, `store`, `recycle`, `epoch/collector`, `persist/log`'s lock, condition
//! variables and flusher) imports them from here, never from `std::sync` or `loom`.
//!
//! What names `std::sync` directly is outside every modeled protocol, each for a reason:
//! - [`StdArc`]: the shared [`GlobalIndex`](crate::GlobalIndex) is handed around as
//!   `std::sync::Arc` because that type is part of the public API; so are a `Db`'s store and
//!   registry handles. No reference count is part of a protocol.
//! - Set-once configuration: `OnceLock`s (the index's reservation hook, the log's failure),
//!   and the fence strategy chosen once before any participant exists (`epoch/fence.rs`).
//! - The persistent store's outer layer (`persist/mod.rs`: the background thread, the one
//!   snapshot at a time; `persist/reserve.rs`: the reservation ceiling behind a mutex), which
//!   waits on the log through its public calls; the crash and power-loss tests exercise it.

#[cfg(all(caskv_loom, not(feature = "loom")))]
compile_error!("--cfg caskv_loom needs the `loom` feature");

#[cfg(caskv_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Arc,
};

#[cfg(not(caskv_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Arc,
};

/// The log's group commit (`persist/log.rs`): its lock, the condition variables its blocking
/// waiters and flusher sleep on, and the flusher thread, so that `loom-tests/tests/group_commit.rs`
/// runs the real hand-off between writers, waiters and the flusher.
#[cfg(caskv_loom)]
pub(crate) use loom::{
    sync::{Condvar, Mutex, MutexGuard},
    thread,
};

#[cfg(not(caskv_loom))]
pub(crate) use std::{
    sync::{Condvar, Mutex, MutexGuard},
    thread,
};

/// The `Arc` of the public API (values, the shared [`GlobalIndex`](crate::GlobalIndex)); `std`'s in every build.
pub(crate) use std::sync::Arc as StdArc;

/// A record's life word (`cell::Life`: its deadline, set before the record is published and
/// never changed, and the eviction policy's hints, written by readers without a read-modify-
/// write): `std`'s in every build. No protocol depends on it (a lost or stale hint only makes
/// eviction less exact), so the loom models need not explore it.
pub(crate) use std::sync::atomic::AtomicU64 as HintU64;

/// Epoch-based reclamation: the one scheme for every node and table of the store, caskv's
/// own (`src/epoch/`).
///
/// Nodes are addressed by slot words (`u64`, see `cell.rs`), so they are retired as a word
/// plus the function that frees it (two words in the retiring thread's queue; nothing is
/// allocated).
#[cfg(not(caskv_loom))]
pub(crate) mod epoch {
    /// A pin on the process-wide collector.
    pub(crate) type Guard = crate::epoch::Guard<'static>;

    /// Pins the current thread: a load, a plain store and a fence that is a compiler fence
    /// where `membarrier` is available (see `src/epoch/`). No read-modify-write.
    #[inline]
    pub(crate) fn pin() -> Guard {
        crate::epoch::pin()
    }

    /// Calls `free(word)` once every thread pinned now has unpinned. Only queues it: frees run
    /// at this thread's later outermost pins, where it holds no per-key lock.
    ///
    /// # Safety
    /// `word`'s node is unreachable for every thread that pins from now on, and retired once.
    #[inline]
    pub(crate) unsafe fn retire(guard: &Guard, word: u64, free: unsafe fn(u64)) {
        // SAFETY: the caller's contract.
        unsafe { guard.retire(word, free) };
    }
}

/// Under loom, reclamation is a stand-in: a retired node is kept until the store is dropped,
/// then freed.
///
/// Why: the collector (`src/epoch/`) is modelled on its own (`loom-tests/tests/epoch.rs`:
/// pins, retires and advances racing, with loom's checked cells standing in for nodes).
/// Running its pins and advances inside every store model as well would put even two-thread
/// models of a batch beyond a CI budget; the store models check *the store's* protocol (which
/// word is published when, with which ordering). Use-after-free on the real collector under
/// the store is what Miri checks (`ci/miri.sh`). The stand-in adds one check loom could not
/// make otherwise: a node retired twice panics.
#[cfg(caskv_loom)]
pub(crate) mod epoch {
    use std::sync::{Arc, Mutex};

    /// Retired nodes: the word and the function that frees it.
    #[derive(Default)]
    pub(crate) struct Garbage {
        retired: Mutex<Vec<(u64, unsafe fn(u64))>>,
    }

    impl Drop for Garbage {
        fn drop(&mut self) {
            let retired = std::mem::take(self.retired.get_mut().unwrap_or_else(|e| e.into_inner()));
            for (word, free) in retired {
                // SAFETY: each word was retired once (checked in `retire`), and nothing can
                // reach it now: the store that linked it is gone.
                unsafe { free(word) };
            }
        }
    }

    /// A pin: keeps the store's garbage list to defer frees to.
    pub(crate) struct Guard {
        garbage: Arc<Garbage>,
    }

    impl Guard {
        pub(crate) fn new(garbage: Arc<Garbage>) -> Self {
            Guard { garbage }
        }
    }

    /// Keeps `word`'s node until the store is dropped.
    ///
    /// # Safety
    /// As the real `retire`: the node is unreachable from now on and retired once.
    pub(crate) unsafe fn retire(guard: &Guard, word: u64, free: unsafe fn(u64)) {
        let addr = word & 0x0000_FFFF_FFFF_FFF0;
        let mut retired = guard
            .garbage
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            retired
                .iter()
                .all(|(w, _)| *w & 0x0000_FFFF_FFFF_FFF0 != addr),
            "node {addr:#x} retired twice"
        );
        retired.push((word, free));
    }
}

/// Waits for another thread to release a per-key lock.
///
/// Spins briefly, then yields the time slice. Under loom every wait yields, which is what lets
/// loom explore the schedule in which the lock holder makes progress.
pub(crate) struct Backoff {
    #[cfg_attr(caskv_loom, allow(dead_code))]
    step: u32,
}

impl Backoff {
    /// Spins below this step, yields from it on.
    #[cfg_attr(caskv_loom, allow(dead_code))]
    const SPIN_LIMIT: u32 = 6;

    pub(crate) fn new() -> Self {
        Backoff { step: 0 }
    }

    pub(crate) fn snooze(&mut self) {
        #[cfg(caskv_loom)]
        {
            loom::thread::yield_now();
        }
        #[cfg(not(caskv_loom))]
        {
            if self.step < Self::SPIN_LIMIT {
                for _ in 0..(1u32 << self.step) {
                    std::hint::spin_loop();
                }
                self.step += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}
