//! Epoch-based reclamation, caskv's own: what every node and table of the store is freed
//! through.
//!
//! # Why not crossbeam-epoch
//! crossbeam-epoch's scheme is the model here (global epoch, per-thread pin words, a node
//! freed two epochs after it was retired), but two of its costs were most of the store's
//! (see `BENCHMARKS.md`): every outermost pin is a `SeqCst` read-modify-write (half of a
//! `get`'s instructions and all of its atomic RMWs), and a retire goes through a shared bag
//! queue whose collection runs up to 512 destructors inside whichever call happens to collect
//! (a write's p99.9). Neither can be changed from outside the crate. Here:
//! - **a pin is a load, a plain store and a compiler fence** ([`fence::light`]); the epoch
//!   advance, a few times per thousand writes, pays a process-wide `membarrier` instead;
//! - **each thread frees only its own garbage, at an outermost pin (every 8 retires), at most
//!   two nodes per retire since its last collection** (and eight more every 256 pins), into its own
//!   block cache (`recycle.rs`): no queue is shared, no call runs more than a few destructors,
//!   and none runs inside a store operation (a freed value's `Drop` is user code: it may
//!   write the store, panic, or retire in turn).
//!
//! # The protocol
//! - *Pin* (outermost): load the global epoch `G` (Acquire), store it in the participant's pin
//!   word, light fence. *Unpin*: store 0 (Release).
//! - *Retire* (after the unlink): light fence, load `G` (Relaxed) as the stamp `s`, queue the
//!   node; nothing else. It is freed by its own participant once `G ≥ s + 3`, in the
//!   collection an outermost pin runs *before* it publishes itself (no pin, no per-key lock
//!   held; a panicking `Drop` unwinds out of `pin` with nothing published; a `Drop` that pins
//!   again does not collect re-entrantly).
//! - *Advance*: load `G = e`, scan (a participant already behind ends it: no fence needed),
//!   heavy fence, scan every participant again; if each is unpinned or pinned at `e`, CAS `G`
//!   from `e` to `e + 1` (Release).
//!
//! # Why `s + 3` is safe (asymmetric fences)
//! Let writer `R` unlink node `N` and read stamp `s`; let reader `T` reach `N`, so `T` read
//! the slot before the unlink was visible to it. Advances to `s + 2` and `s + 3` took place.
//! 1. The advance to `s + 2` loaded `G = s + 1` before its heavy fence, so `s + 1` was
//!    globally visible when the fence interrupted `R`; `R` read `s`, so it was interrupted
//!    after that load, hence after its unlink: the unlink is globally visible once the heavy
//!    fence returns, before `G = s + 2` is stored.
//! 2. The advance to `s + 3` scanned after its heavy fence. If `T`'s pin store was before its
//!    interrupt point, the scan saw it (or a later unpin or re-pin, each a Release store), so
//!    `T` was pinned at `s + 2` (or had unpinned): it
//!    loaded `G = s + 2` (Acquire) before reading the slot, and `s + 2` was stored after the
//!    unlink became visible (1), so `T` read the unlinked slot. If the pin store came after
//!    the interrupt point, `T`'s read came after a full barrier executed after (1): the same.
//!
//! Both contradict `T` reaching `N`, so when `N` is freed no pin can hold it. (With symmetric
//! `SeqCst` fences, the fallback, the retire's fence makes this crossbeam's own argument and
//! `s + 2` would do; `s + 3` costs only a little more garbage.)
//!
//! # Threads
//! A thread registers a participant at its first pin and gives it back when it exits (at its
//! last unpin, if a thread-local destructor still holds a pin then). What it still holds goes
//! to the collector's orphans (nothing is freed in a thread-local destructor, where a value's
//! `Drop` could find the thread's other thread-locals gone); other threads adopt them a few at
//! a time at their collection steps, and `reclaim` all at once.
//! A thread that retires and then goes idle keeps what it retired until it runs again, calls
//! `reclaim`, or exits.

mod collector;
pub(crate) mod fence;

#[cfg(not(caskv_loom))]
use collector::Participant;
#[cfg(not(caskv_loom))]
pub(crate) use collector::{Collector, Guard};
#[cfg(caskv_loom)]
pub use collector::{Collector, Guard, Handle};

#[cfg(not(caskv_loom))]
mod global {
    use std::cell::Cell;
    use std::ptr;

    use super::{Collector, Guard, Participant};

    /// The process-wide collector every store uses.
    pub(super) static COLLECTOR: Collector = Collector::new();

    std::thread_local! {
        /// This thread's participant, or null before its first pin (and after it exits). No
        /// destructor, so it stays readable during thread-local teardown.
        static LOCAL: Cell<*const Participant> = const { Cell::new(ptr::null()) };
        /// Gives the participant back when the thread exits.
        static OWNER: Owner = const { Owner };
    }

    struct Owner;

    impl Drop for Owner {
        fn drop(&mut self) {
            let p = LOCAL.with(|l| l.replace(ptr::null()));
            if !p.is_null() {
                // SAFETY: participants of the static collector are never freed, and `LOCAL`
                // holds the one this thread owns.
                unsafe { (*p).exit(&COLLECTOR) };
            }
        }
    }

    /// Pins the calling thread on the process-wide collector.
    #[inline]
    pub(crate) fn pin() -> Guard<'static> {
        let p = LOCAL.with(Cell::get);
        if p.is_null() {
            return pin_slow();
        }
        // SAFETY: `LOCAL` holds a participant of the static collector (never freed) that this
        // thread owns.
        unsafe { Guard::enter(&COLLECTOR, &*p) }
    }

    #[cold]
    fn pin_slow() -> Guard<'static> {
        let p = COLLECTOR.register();
        // Touching `OWNER` registers its destructor; if it is already gone (we are called
        // from another thread-local's destructor), the participant goes back at the last
        // unpin instead.
        if OWNER.try_with(|_| ()).is_err() {
            // SAFETY: registered just now, by this thread.
            unsafe { p.release_on_unpin() };
        }
        LOCAL.with(|l| l.set(p));
        // SAFETY: registered just now, by this thread.
        unsafe { Guard::enter(&COLLECTOR, p) }
    }

    /// A participant was released at its last unpin: this thread no longer owns it.
    pub(super) fn forget_local(p: &Participant) {
        let _ = LOCAL.try_with(|l| {
            if ptr::eq(l.get(), p) {
                l.set(ptr::null());
            }
        });
    }

    /// Runs `f` on the calling thread's block cache (see `recycle.rs`); `None` when the thread
    /// holds no participant (it never pinned, or gave its participant up while exiting).
    #[inline]
    pub(crate) fn with_blocks<R>(f: impl FnOnce(&mut crate::recycle::Blocks) -> R) -> Option<R> {
        let p = LOCAL.with(Cell::get);
        if p.is_null() {
            return None;
        }
        // SAFETY: `LOCAL` holds a participant of the static collector (never freed) that this
        // thread owns; `f` is a push or pop that never reaches the cache again.
        Some(f(unsafe { (*p).blocks() }))
    }

    /// Frees what the calling thread has retired, as far as other threads' pins allow; see
    /// [`crate::reclaim`].
    pub(crate) fn reclaim() -> usize {
        let mut p = LOCAL.with(Cell::get);
        if p.is_null() {
            // A thread that never pinned still takes orphans: register it (a pin and unpin).
            drop(pin());
            p = LOCAL.with(Cell::get);
            if p.is_null() {
                return 0; // released at that unpin (thread-locals being torn down)
            }
        }
        // SAFETY: as in `pin`.
        unsafe { (*p).flush(&COLLECTOR) }
    }
}

#[cfg(not(caskv_loom))]
use global::forget_local;
#[cfg(not(caskv_loom))]
pub(crate) use global::{pin, reclaim, with_blocks};

/// Under loom there is no thread-local participant to forget: handles own theirs.
#[cfg(caskv_loom)]
fn forget_local(_: &collector::Participant) {}

#[cfg(all(test, not(caskv_loom)))]
mod tests {
    use super::Collector;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    static FREED: AtomicUsize = AtomicUsize::new(0);

    /// A "node": a boxed counter token; freeing it counts.
    fn node() -> u64 {
        Box::into_raw(Box::new(7u64)).expose_provenance() as u64
    }

    unsafe fn free(word: u64) {
        // SAFETY: made by `node` and freed once (the collector's contract).
        drop(unsafe { Box::from_raw(std::ptr::with_exposed_provenance_mut::<u64>(word as usize)) });
        FREED.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn a_retired_node_waits_three_epochs_and_a_pin_holds_it_back() {
        let c = Collector::new();
        let writer = c.register_handle();
        let reader = c.register_handle();
        let before = FREED.load(Ordering::Relaxed);
        let held = reader.pin();
        {
            let g = writer.pin();
            // SAFETY: a fresh node, unreachable, retired once.
            unsafe { g.retire(node(), free) };
        }
        assert_eq!(writer.pending(), 1);
        // The reader pinned at epoch 1: the epoch moves to 2 and no further.
        assert_eq!(c.try_advance(), 2);
        assert_eq!(c.try_advance(), 2);
        assert_eq!(
            writer.flush(),
            1,
            "freed under a pin taken before the retire"
        );
        drop(held);
        assert_eq!(writer.flush(), 0);
        assert!(c.epoch() >= 4);
        assert!(FREED.load(Ordering::Relaxed) > before);
        drop((writer, reader));
    }

    #[test]
    fn nested_pins_publish_once_and_the_last_unpin_clears() {
        let c = Collector::new();
        let h = c.register_handle();
        let outer = h.pin();
        let inner = h.pin();
        drop(outer);
        // Still pinned (at 1) through `inner`: no advance past 2.
        c.try_advance();
        assert_eq!(c.try_advance(), 2);
        drop(inner);
        assert_eq!(c.try_advance(), 3);
    }

    #[test]
    fn each_retire_frees_a_bounded_number_and_keeps_up() {
        let c = Collector::new();
        let h = c.register_handle();
        let mut peak = 0;
        let rounds = if cfg!(miri) { 2_000 } else { 100_000 };
        for _ in 0..rounds {
            let g = h.pin();
            // SAFETY: a fresh node, unreachable, retired once.
            unsafe { g.retire(node(), free) };
            drop(g);
            peak = peak.max(h.pending());
        }
        // Advances every 128 retires, three epochs to expire: a few hundred in flight.
        assert!(
            peak < 1_024,
            "{peak} pending: frees do not keep up with retires"
        );
        assert_eq!(h.flush(), 0);
    }

    #[test]
    fn an_exited_threads_garbage_goes_to_the_orphans_and_is_freed_by_another_thread() {
        let c = Arc::new(Collector::new());
        let blocker = c.register_handle();
        let held = blocker.pin();
        let c2 = c.clone();
        let before = FREED.load(Ordering::Relaxed);
        std::thread::spawn(move || {
            let h = c2.register_handle();
            let g = h.pin();
            // SAFETY: a fresh node, unreachable, retired once.
            unsafe { g.retire(node(), free) };
        })
        .join()
        .unwrap();
        // The pin held the node back when its thread exited: it is an orphan now, in no
        // participant.
        let h = c.register_handle();
        assert_eq!(h.pending() + blocker.pending(), 0);
        drop(held);
        // Another thread's flush adopts it and, the pin gone, frees it.
        assert_eq!(blocker.flush(), 0);
        assert!(FREED.load(Ordering::Relaxed) > before);
    }

    #[test]
    fn the_process_collector_reclaims_through_the_public_function() {
        let store: crate::Store<u64, Arc<()>> = crate::Store::new();
        let token = Arc::new(());
        store.set(1, token.clone());
        for _ in 0..10 {
            store.set(1, Arc::new(()));
        }
        assert_eq!(crate::reclaim(), 0);
        assert_eq!(
            Arc::strong_count(&token),
            1,
            "the replaced value was dropped"
        );
    }
}
