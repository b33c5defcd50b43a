//! Asymmetric fences: a cheap *light* fence on the pin path, paid for by a *heavy* fence on
//! the rare epoch advance.
//!
//! On Linux the heavy fence is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: the kernel
//! interrupts every CPU running a thread of this process and has it execute a full barrier at
//! an instruction boundary. A light fence is then only a compiler fence: whatever a thread did
//! before the interrupt point is globally visible when the heavy fence returns, and whatever it
//! does after sees everything that was visible then. This is C++'s proposed
//! `asymmetric_thread_fence_light/heavy` (P1202) and what `seize` (papaya's collector) and
//! liburcu's memb flavour do.
//!
//! Everywhere else (no `membarrier`, or it refuses to register; Miri; loom; ThreadSanitizer,
//! which cannot see fences or interrupts) both sides are `fence(SeqCst)`: crossbeam-epoch's
//! symmetric scheme. The strategy is chosen once, by [`init`], before the first participant of
//! any collector is published, and never changes: a light fence paired with a symmetric
//! heavy fence would order nothing.

#[cfg(caskv_loom)]
use loom::sync::atomic::fence;
use std::sync::atomic::compiler_fence;
#[cfg(not(caskv_loom))]
use std::sync::atomic::fence;
use std::sync::atomic::Ordering;

#[cfg(all(
    target_os = "linux",
    not(miri),
    not(caskv_loom),
    not(caskv_sanitize_thread)
))]
mod strategy {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Once;

    /// `membarrier` commands (linux/membarrier.h).
    const QUERY: libc::c_int = 0;
    const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    /// Whether light fences are compiler fences (`membarrier` registered). Written once, inside
    /// `INIT`, before any participant exists; every thread reads it after passing `INIT` itself
    /// (its first pin registers a participant through [`super::init`]).
    static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
    static INIT: Once = Once::new();

    fn membarrier(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: `membarrier` takes two integers and touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_int) }
    }

    pub(super) fn init() {
        INIT.call_once(|| {
            let supported = membarrier(QUERY);
            let wanted = (PRIVATE_EXPEDITED | REGISTER_PRIVATE_EXPEDITED) as libc::c_long;
            if supported >= 0
                && supported & wanted == wanted
                && membarrier(REGISTER_PRIVATE_EXPEDITED) == 0
            {
                // Relaxed: published to other threads by `INIT` itself (they all pass it
                // before their first pin).
                ASYMMETRIC.store(true, Ordering::Relaxed);
            }
        });
    }

    #[inline]
    pub(super) fn asymmetric() -> bool {
        // Relaxed: written once before any reader could get here (see `ASYMMETRIC`).
        ASYMMETRIC.load(Ordering::Relaxed)
    }

    /// The process-wide barrier. Registered, so it cannot fail short of a kernel that takes
    /// back what it granted; then no ordering can be promised, and going on could free memory
    /// a reader still uses, so the process aborts.
    pub(super) fn heavy() {
        if membarrier(PRIVATE_EXPEDITED) != 0 {
            std::process::abort();
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    not(miri),
    not(caskv_loom),
    not(caskv_sanitize_thread)
)))]
mod strategy {
    pub(super) fn init() {}

    #[inline]
    pub(super) fn asymmetric() -> bool {
        false
    }

    pub(super) fn heavy() {}
}

/// Chooses the strategy; called before a participant is published.
pub(crate) fn init() {
    strategy::init();
}

/// Orders a preceding store (a pin) before the following loads, against [`heavy`].
#[inline]
pub(crate) fn light() {
    if strategy::asymmetric() {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The other side of [`light`]: on return, every thread's stores before its last light fence
/// are visible here, and its loads after its next light fence see what was visible here.
pub(crate) fn heavy() {
    if strategy::asymmetric() {
        strategy::heavy();
    } else {
        fence(Ordering::SeqCst);
    }
}
