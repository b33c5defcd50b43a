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
/// `--cfg crossbeam_loom`, so its `Atomic` (every cell head) is a loom atomic there.
#[cfg(not(caskv_loom))]
pub(crate) mod epoch {
    pub(crate) use crossbeam_epoch::{pin, unprotected, Atomic, Guard, Owned, Shared};
}

/// Under loom, reclamation is a stand-in: loads run under crossbeam's `unprotected` guard and a
/// retired node is kept until the store is dropped, then freed.
///
/// Why: crossbeam-epoch's pin and collect are a dozen loom operations each, which put even
/// two-thread models of a batch beyond a CI budget, and its global collector finalizes in
/// loom's thread teardown, which loom cannot replay. The models check *our* protocol (which
/// node is published when, with which ordering); epoch reclamation is crossbeam's own, loom
/// tested upstream. Use-after-free is what Miri checks on the real collector (`ci/miri.sh`).
/// The stand-in adds one check loom could not make otherwise: a node retired twice panics.
#[cfg(caskv_loom)]
pub(crate) mod epoch {
    pub(crate) use crossbeam_epoch::{unprotected, Atomic, Owned, Shared};
    use std::sync::{Arc, Mutex};

    /// Retired nodes: address and the function that frees it.
    #[derive(Default)]
    pub(crate) struct Garbage {
        retired: Mutex<Vec<(usize, unsafe fn(usize))>>,
    }

    impl Drop for Garbage {
        fn drop(&mut self) {
            let retired = std::mem::take(self.retired.get_mut().unwrap_or_else(|e| e.into_inner()));
            for (addr, free) in retired {
                // SAFETY: each address was retired once (checked in `defer_destroy`), came from
                // an `Owned`, and nothing can reach it now: the store that linked it is gone.
                unsafe { free(addr) };
            }
        }
    }

    /// A pin: derefs to crossbeam's `unprotected` guard for loads, defers frees to `Garbage`.
    pub(crate) struct Guard {
        garbage: Arc<Garbage>,
    }

    impl Guard {
        pub(crate) fn new(garbage: Arc<Garbage>) -> Self {
            Guard { garbage }
        }

        /// Keeps `ptr` until the store is dropped.
        ///
        /// # Safety
        /// As crossbeam's `Guard::defer_destroy`: `ptr` is unlinked and retired once.
        pub(crate) unsafe fn defer_destroy<T>(&self, ptr: Shared<'_, T>) {
            unsafe fn free<T>(addr: usize) {
                // SAFETY: `addr` is the untagged address of an `Owned<T>` (see `Garbage::drop`).
                drop(unsafe { Shared::from(addr as *const T).into_owned() });
            }
            let addr = ptr.with_tag(0).as_raw() as usize;
            let mut retired = self
                .garbage
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            assert!(
                retired.iter().all(|(a, _)| *a != addr),
                "node {addr:#x} retired twice"
            );
            retired.push((addr, free::<T>));
        }
    }

    impl Guard {
        /// As crossbeam's `Guard::flush`; nothing to hand over here (see the module docs).
        pub(crate) fn flush(&self) {}
    }

    impl std::ops::Deref for Guard {
        type Target = crossbeam_epoch::Guard;
        fn deref(&self) -> &crossbeam_epoch::Guard {
            // SAFETY: nothing is freed while any store is alive (see the module docs), so
            // every load made under this guard stays valid as long as the store does.
            unsafe { unprotected() }
        }
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
