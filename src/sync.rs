//! The one place that names the concurrency primitives.
//!
//! Under `--cfg caskv_loom` (with the `loom` feature and `--cfg crossbeam_loom`) every atomic,
//! lock, `Arc` and spin-wait below comes from [loom], and crossbeam-epoch switches itself to its
//! loom-aware build, so the loom models in `loom-tests/` run the real cell and batch code. Every
//! other module imports from here and never from `std::sync` or `loom` directly.
//!
//! The one exception is [`StdArc`]: values are handed to callers as `std::sync::Arc<V>` in
//! every build, because that type is part of the public API. Its reference count is not part of
//! any protocol in this crate.

#[cfg(all(caskv_loom, not(feature = "loom")))]
compile_error!("--cfg caskv_loom needs the `loom` feature (and --cfg crossbeam_loom)");

#[cfg(caskv_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, AtomicU8, Ordering},
    Arc,
};

#[cfg(not(caskv_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, AtomicU8, Ordering},
    Arc,
};

#[cfg(caskv_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

/// The `Arc` of the public API (values, the shared [`GlobalIndex`](crate::GlobalIndex)); `std`'s in every build.
pub(crate) use std::sync::Arc as StdArc;

/// Epoch-based reclamation of version nodes. crossbeam-epoch is loom-aware under
/// `--cfg crossbeam_loom`, so this re-export needs no switch of its own.
pub(crate) mod epoch {
    pub(crate) use crossbeam_epoch::{pin, unprotected, Atomic, Guard, Owned, Shared};
    #[cfg(caskv_loom)]
    pub(crate) use crossbeam_epoch::{Collector, LocalHandle};
}

/// Waits for another thread to release a per-key lock.
///
/// Spins briefly, then yields the time slice. Under loom every wait yields, which is what lets
/// loom explore the schedule in which the lock holder makes progress.
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    /// Spins below this step, yields from it on.
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
