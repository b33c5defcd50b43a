//! The one place that names the concurrency primitives.
//!
//! Under `--cfg caskv_loom` (with the `loom` feature and `--cfg crossbeam_loom`) every atomic,
//! lock, `Arc` and spin-wait below comes from [loom], and crossbeam-epoch switches itself to its
//! loom-aware build, so the loom models in `loom-tests/` run the real cell and batch code. Every
//! other module imports from here and never from `std::sync` or `loom` directly.
//!
//! The one exception is [`StdArc`]: the shared [`GlobalIndex`](crate::GlobalIndex) is handed
//! around as `std::sync::Arc` in every build, because that type is part of the public API. Its
//! reference count is not part of any protocol in this crate.

#[cfg(all(caskv_loom, not(feature = "loom")))]
compile_error!("--cfg caskv_loom needs the `loom` feature (and --cfg crossbeam_loom)");

#[cfg(caskv_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Arc,
};

#[cfg(not(caskv_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Arc,
};

/// The `Arc` of the public API (values, the shared [`GlobalIndex`](crate::GlobalIndex)); `std`'s in every build.
pub(crate) use std::sync::Arc as StdArc;

/// Epoch-based reclamation: the one scheme for every node and table of the store.
///
/// Nodes are addressed by slot words (`u64`, see `cell.rs`), so they are retired as a word
/// plus the function that frees it; crossbeam keeps such a deferred call inline in its bag
/// (two words), so retiring allocates nothing.
#[cfg(not(caskv_loom))]
pub(crate) mod epoch {
    pub(crate) use crossbeam_epoch::Guard;

    /// Pins the current thread (one atomic read-modify-write, plus a collection every 128
    /// pins: crossbeam-epoch's cadence).
    #[inline]
    pub(crate) fn pin() -> Guard {
        crossbeam_epoch::pin()
    }

    /// Retires between two flushes of this thread's garbage while it holds a handle (see
    /// [`retire`]).
    const RETIRES_PER_FLUSH: u32 = 64;

    std::thread_local! {
        /// `Pinned` handles this thread holds, and nodes it retired since its last flush.
        static HELD: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
    }

    /// A `Pinned` handle was taken on this thread.
    #[inline]
    pub(crate) fn hold() {
        HELD.with(|h| {
            let (held, retired) = h.get();
            h.set((held + 1, retired));
        });
    }

    /// A `Pinned` handle of this thread was dropped.
    #[inline]
    pub(crate) fn release() {
        HELD.with(|h| {
            let (held, retired) = h.get();
            h.set((held.saturating_sub(1), retired));
        });
    }

    /// Calls `free(word)` once every thread pinned now has unpinned.
    ///
    /// While the thread holds a [`Pinned`](crate::Pinned) handle, every [`RETIRES_PER_FLUSH`]
    /// retires it also flushes: it hands its bag over and runs one collection (at most
    /// crossbeam's 8 bags of 64). crossbeam collects on its own only every 128 *outermost*
    /// pins, and inside a held handle every pin nests, so writes there would otherwise retire
    /// far faster than anything is freed. Outside a handle every operation's pin is outermost
    /// and crossbeam's own cadence keeps up.
    ///
    /// # Safety
    /// `word`'s node is unreachable for every thread that pins from now on, and retired once.
    #[inline]
    pub(crate) unsafe fn retire(guard: &Guard, word: u64, free: unsafe fn(u64)) {
        // SAFETY: the caller's contract; `free` runs once, after every guard that could
        // still reach the node is gone.
        unsafe { guard.defer_unchecked(move || free(word)) };
        let flush = HELD.with(|h| {
            let (held, retired) = h.get();
            if held == 0 {
                return false;
            }
            let retired = retired.wrapping_add(1);
            h.set((held, retired));
            retired % RETIRES_PER_FLUSH == 0
        });
        if flush {
            guard.flush();
        }
    }
}

/// Under loom, reclamation is a stand-in: a retired node is kept until the store is dropped,
/// then freed.
///
/// Why: crossbeam-epoch's pin and collect are a dozen loom operations each, which put even
/// two-thread models of a batch beyond a CI budget, and its global collector finalizes in
/// loom's thread teardown, which loom cannot replay. The models check *our* protocol (which
/// word is published when, with which ordering); epoch reclamation is crossbeam's own, loom
/// tested upstream. Use-after-free is what Miri checks on the real collector (`ci/miri.sh`).
/// The stand-in adds one check loom could not make otherwise: a node retired twice panics.
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

        /// As crossbeam's `Guard::flush`; nothing to hand over here (see the module docs).
        pub(crate) fn flush(&self) {}
    }

    /// As the real `hold`: nothing to count here.
    pub(crate) fn hold() {}

    /// As the real `release`.
    pub(crate) fn release() {}

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
