//! The collector: the global epoch, the participants, and each participant's garbage.
//!
//! # Invariants
//! - The global epoch starts at 1 and only moves by one CAS from `e` to `e + 1`, after a
//!   heavy fence and a scan that found every pinned participant at `e`.
//! - A participant's `pinned` word is 0 (not pinned) or the global epoch it loaded when it
//!   pinned; only its owner writes it.
//! - Participants are never freed while the collector lives; a thread that exits gives its
//!   participant back for the next thread that registers, and what it still held to the
//!   collector's orphans.
//! - Garbage stamped `s` (the global epoch loaded after the node was unlinked) is freed only
//!   once the global epoch has reached `s + EXPIRY`, by the participant that retired it or
//!   the one that adopted it as an orphan, never inside a pin.

use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ptr;

use super::fence;
use crate::recycle::Blocks;
use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// Garbage stamped `s` is freed once the global epoch is `s + EXPIRY` or later.
///
/// Three, not crossbeam's two, because the stamp is loaded without a fence of its own in the
/// asymmetric scheme; the extra epoch is what orders the unlink before every later pin (see
/// the proof in the module docs of `epoch`).
const EXPIRY: u64 = 3;

/// Retires between two attempts to advance the epoch while the oldest garbage is not yet
/// free to go. An attempt costs one heavy fence (a `membarrier`, about 0.2–5 µs) unless a
/// cheap scan already sees a participant behind.
const ADVANCE_EVERY: u32 = 128;

/// Expired nodes a collection frees per retire since the last one: more than one, so a
/// backlog drains, and few, so no call runs more than a couple of destructors of other
/// writes per write it made.
const FREE_PER_RETIRE: usize = 2;

/// What a retire brings the next collection forward by, in pins: a collection comes every
/// [`PINS_PER_STEP`] outermost pins, or every 8 retires (one collection call per few writes
/// rather than per write, and still a handful of destructors per call).
const RETIRE_WEIGHT: u32 = PINS_PER_STEP / 8;

/// Orphaned nodes a step adopts at most.
const ADOPT_PER_STEP: usize = 64;

/// Outermost pins between two collection steps (so that threads that mostly read still free
/// what they once retired).
const PINS_PER_STEP: u32 = 256;

/// Expired nodes one collection step frees at most.
const FREE_PER_STEP: usize = 8;

/// A retired node: the word that addresses it, the function that frees it, and the global
/// epoch loaded after it was unlinked.
struct Retired {
    stamp: u64,
    word: u64,
    free: unsafe fn(u64),
}

/// One epoch domain: the global epoch and the list of participants.
///
/// The store uses one process-wide collector (`epoch::pin`); the loom models make their own.
pub struct Collector {
    epoch: AtomicU64,
    /// Head of the push-only list of participants.
    participants: AtomicPtr<Participant>,
    /// Garbage of exited threads that had not expired, adopted by other threads' steps.
    /// A plain `std` mutex: it hands whole nodes over (and orders them), it is not part of
    /// the pin/advance protocol the loom models check.
    orphans: std::sync::Mutex<Vec<Retired>>,
    /// Whether `orphans` may hold something (a hint, so steps skip the lock).
    has_orphans: AtomicBool,
}

/// A thread's record in a collector: its pin word, read by every advance, and its garbage.
///
/// # Invariants
/// `pinned`, `owned` and `next` are shared; `next` is written once, before the participant is
/// published. Every other field is touched only by the owner: the thread that set `owned`
/// (a registration) until it clears it (a release). The methods that touch them are `unsafe`
/// with that contract; the private helpers they call inherit it.
#[repr(align(128))]
pub struct Participant {
    pinned: AtomicU64,
    owned: AtomicBool,
    next: *const Participant,
    depth: Cell<u32>,
    /// Outermost pins until the next collection (retires bring it forward).
    until_collect: Cell<u32>,
    /// Frees owed by retires since the last collection.
    owed: Cell<u32>,
    /// Retires since the last advance attempt.
    since_advance: Cell<u32>,
    /// A collection (or flush, or release) is running on this thread.
    collecting: Cell<bool>,
    exiting: Cell<bool>,
    garbage: UnsafeCell<VecDeque<Retired>>,
    /// Owner only: the thread's cache of node blocks (see `recycle.rs`), emptied when the
    /// participant is given up.
    blocks: UnsafeCell<Blocks>,
}

// SAFETY: the shared fields are atomics (`next` is immutable once published); the owner-only
// fields are touched by one thread at a time, and ownership passes through the Release store
// and Acquire CAS of `owned`.
unsafe impl Sync for Participant {}
// SAFETY: as above; the garbage's free functions may run on any thread (the store's nodes are
// `Send`).
unsafe impl Send for Participant {}

impl Collector {
    /// A collector with no participants, at epoch 1.
    #[cfg(not(caskv_loom))]
    pub const fn new() -> Self {
        Collector {
            epoch: AtomicU64::new(1),
            participants: AtomicPtr::new(ptr::null_mut()),
            orphans: std::sync::Mutex::new(Vec::new()),
            has_orphans: AtomicBool::new(false),
        }
    }

    /// A collector with no participants, at epoch 1.
    #[cfg(caskv_loom)]
    pub fn new() -> Self {
        Collector {
            epoch: AtomicU64::new(1),
            participants: AtomicPtr::new(ptr::null_mut()),
            orphans: std::sync::Mutex::new(Vec::new()),
            has_orphans: AtomicBool::new(false),
        }
    }

    /// The current global epoch (for tests and the models).
    #[cfg(any(test, caskv_loom))]
    pub fn epoch(&self) -> u64 {
        // Acquire: as in `collect`.
        self.epoch.load(Ordering::Acquire)
    }

    /// A participant owned by the calling thread from now on: a released one if there is
    /// one, else a new one pushed on the list.
    pub(crate) fn register(&self) -> &Participant {
        fence::init();
        // Acquire: pairs with the Release CAS that published each participant.
        let mut at = self.participants.load(Ordering::Acquire);
        while !at.is_null() {
            // SAFETY: participants are never freed while the collector lives.
            let p = unsafe { &*at };
            // Acquire: pairs with the Release in `release`, so the previous owner's writes to
            // the owner-only fields (its garbage) are visible to us.
            if !p.owned.load(Ordering::Relaxed)
                && p.owned
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return p;
            }
            at = p.next.cast_mut();
        }
        let new = Box::into_raw(Box::new(Participant {
            pinned: AtomicU64::new(0),
            owned: AtomicBool::new(true),
            next: ptr::null(),
            depth: Cell::new(0),
            until_collect: Cell::new(PINS_PER_STEP),
            owed: Cell::new(0),
            since_advance: Cell::new(0),
            collecting: Cell::new(false),
            exiting: Cell::new(false),
            garbage: UnsafeCell::new(VecDeque::new()),
            blocks: UnsafeCell::new(Blocks::new()),
        }));
        let mut head = self.participants.load(Ordering::Relaxed);
        loop {
            // SAFETY: `new` is ours alone until the CAS below publishes it.
            unsafe { (*new).next = head };
            // Release: publishes the participant's initial fields to scanners.
            match self.participants.compare_exchange_weak(
                head,
                new,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                // SAFETY: published, and never freed while the collector lives.
                Ok(_) => return unsafe { &*new },
                Err(now) => head = now,
            }
        }
    }

    /// Moves the global epoch from `e` to `e + 1` if every pinned participant is at `e`;
    /// returns the global epoch after the attempt.
    pub fn try_advance(&self) -> u64 {
        // Acquire: the caller may free by the value returned when the attempt fails early.
        let epoch = self.epoch.load(Ordering::Acquire);
        // A scan without the fence first: a participant already seen behind needs no
        // `membarrier` to tell (it can only be behind more after the fence).
        if self.any_behind(epoch) {
            return epoch;
        }
        // Pairs with every participant's light fence after its pin store: a pin that this scan
        // misses is ordered after the fence, so its reads see every unlink before it.
        fence::heavy();
        if self.any_behind(epoch) {
            return epoch;
        }
        // Release: passes on what the scan acquired to every thread that frees after loading
        // the new epoch (Acquire in `collect`). Acquire on failure: as above.
        match self
            .epoch
            .compare_exchange(epoch, epoch + 1, Ordering::Release, Ordering::Acquire)
        {
            Ok(_) => epoch + 1,
            Err(now) => now,
        }
    }

    /// Whether some participant is pinned at an epoch other than `epoch`.
    fn any_behind(&self, epoch: u64) -> bool {
        // Acquire: pairs with the Release CAS that published each participant.
        let mut at = self.participants.load(Ordering::Acquire);
        while !at.is_null() {
            // SAFETY: participants are never freed while the collector lives.
            let p = unsafe { &*at };
            // Acquire: pairs with the Release of an unpin (or of a later pin), so the reads
            // the participant made while pinned happen before anything freed after an advance.
            let pinned = p.pinned.load(Ordering::Acquire);
            if pinned != 0 && pinned != epoch {
                return true;
            }
            at = p.next.cast_mut();
        }
        false
    }

    /// A handle that owns a participant until it is dropped (for the loom models and tests;
    /// the store's threads own theirs through a thread-local).
    #[cfg(any(test, caskv_loom))]
    pub fn register_handle(&self) -> Handle<'_> {
        Handle {
            collector: self,
            participant: self.register(),
            _not_send: PhantomData,
        }
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Only collectors other than the process-wide one are dropped, and `&mut self` says
        // no handle or guard of ours is left: everything retired is unreachable.
        let orphans = std::mem::take(self.orphans.get_mut().unwrap_or_else(|e| e.into_inner()));
        for r in orphans {
            // SAFETY: retired once, and nothing can reach it any more (see above).
            unsafe { (r.free)(r.word) };
        }
        let mut at = self.participants.load(Ordering::Acquire);
        while !at.is_null() {
            // SAFETY: every participant was made by `Box::into_raw` in `register` and is freed
            // here once.
            let p = unsafe { *Box::from_raw(at) };
            at = p.next.cast_mut();
            for r in p.garbage.into_inner() {
                // SAFETY: retired once, and nothing can reach it any more (see above).
                unsafe { (r.free)(r.word) };
            }
        }
    }
}

impl Participant {
    /// Pins (or nests a pin). The outermost pin first pays what this thread owes the
    /// collector (see [`Participant::collect`]), then publishes the global epoch and fences.
    ///
    /// # Safety
    /// The calling thread owns this participant (it registered it and has not released it).
    #[inline]
    pub(crate) unsafe fn enter(&self, collector: &Collector) {
        let depth = self.depth.get();
        if depth == 0 {
            let until = self.until_collect.get();
            if until <= 1 {
                self.collect(collector);
            } else {
                self.until_collect.set(until - 1);
            }
            // Acquire: our reads of the structure are ordered after the epoch we announce, so
            // a reader pinned at `e` sees every unlink made visible before `e` was stored.
            let epoch = collector.epoch.load(Ordering::Acquire);
            // Release: a scan that reads this word (or a later one) is ordered after the
            // reads of our previous pin; the ordering against the advance is the light fence
            // below (ThreadSanitizer's build uses an RMW, the only ordering it can see).
            #[cfg(not(caskv_sanitize_thread))]
            self.pinned.store(epoch, Ordering::Release);
            #[cfg(caskv_sanitize_thread)]
            self.pinned.swap(epoch, Ordering::SeqCst);
            fence::light();
        }
        self.depth.set(depth + 1);
    }

    /// Unpins (or leaves a nested pin). Returns whether this released the participant (its
    /// thread had exited while pinned).
    ///
    /// # Safety
    /// The calling thread owns this participant (it registered it and has not released it)
    /// and is pinned on it.
    #[inline]
    pub(crate) unsafe fn leave(&self, collector: &Collector) -> bool {
        let depth = self.depth.get() - 1;
        self.depth.set(depth);
        if depth == 0 {
            // Release: every read made while pinned happens before an advance that sees 0.
            self.pinned.store(0, Ordering::Release);
            if self.exiting.get() {
                self.release(collector);
                return true;
            }
        }
        false
    }

    /// Queues `word`'s node; it is freed at one of this thread's later outermost pins, once
    /// the epoch has moved [`EXPIRY`] past now. Runs no other code and frees nothing: the
    /// caller may hold per-key locks, and a freed value's `Drop` is user code.
    ///
    /// # Safety
    /// The calling thread owns this participant and is pinned on it; the node is unreachable
    /// for every pin from now on, and retired once; `free(word)` frees it.
    #[inline]
    pub(crate) unsafe fn retire(&self, collector: &Collector, word: u64, free: unsafe fn(u64)) {
        // Orders the unlink (the caller's CAS) before the stamp load: a compiler fence in the
        // asymmetric scheme (an advance's heavy fence interrupts us after the load, see the
        // proof in `epoch`), crossbeam's SeqCst fence otherwise.
        fence::light();
        // Relaxed: a stale (smaller) stamp only delays the free; EXPIRY covers the rest.
        let stamp = collector.epoch.load(Ordering::Relaxed);
        // SAFETY: owner-only field, and no other reference to it is live (a collection never
        // holds one across a free).
        unsafe { (*self.garbage.get()).push_back(Retired { stamp, word, free }) };
        self.owed
            .set(self.owed.get().saturating_add(FREE_PER_RETIRE as u32));
        self.until_collect
            .set(self.until_collect.get().saturating_sub(RETIRE_WEIGHT));
        self.since_advance
            .set(self.since_advance.get().saturating_add(1));
    }

    /// The collection an outermost pin runs before it publishes itself (so this thread holds
    /// no pin and no per-key lock, and a panicking `Drop` unwinds out of `pin` with nothing
    /// published), every [`PINS_PER_STEP`] outermost pins or 8 retires (see
    /// [`RETIRE_WEIGHT`]): adopts a few orphans (garbage of exited threads), then frees, oldest
    /// first, up to what it owes ([`FREE_PER_RETIRE`] per retire since the last collection)
    /// plus [`FREE_PER_STEP`] plus what it adopted, after trying to advance the epoch if the
    /// oldest is not expired. Not re-entered: a `Drop` that pins again collects nothing.
    #[cold]
    #[inline(never)]
    fn collect(&self, collector: &Collector) {
        if self.collecting.get() {
            return;
        }
        let _collecting = Collecting::new(&self.collecting);
        self.until_collect.set(PINS_PER_STEP);
        let adopted = self.adopt_orphans(collector, ADOPT_PER_STEP);
        // Acquire: pairs with the Release CAS of the advance that reached this epoch, so every
        // read of a reader seen unpinned by that advance happens before our frees.
        let mut now = collector.epoch.load(Ordering::Acquire);
        let owed = self.owed.get();
        // Advance when the oldest waits, at most once per ADVANCE_EVERY retires of a writing
        // thread (each attempt may cost a membarrier), or at a collection that pins alone
        // brought (a thread that has stopped writing).
        if (owed == 0 || self.since_advance.get() >= ADVANCE_EVERY) && !self.expired(now) {
            self.since_advance.set(0);
            now = collector.try_advance();
        }
        // What it owes, plus a step's worth, plus what it adopted.
        self.free_expired(now, owed as usize + FREE_PER_STEP + adopted);
        // What could not be freed now is forgiven: later retires owe more, two each, so a
        // backlog drains at one per retire once the epoch moves.
        self.owed.set(0);
    }

    /// Whether the oldest garbage has expired at epoch `now` (or there is none).
    fn expired(&self, now: u64) -> bool {
        self.oldest().is_none_or(|s| now >= s + EXPIRY)
    }

    /// Frees up to `max` nodes expired at `now`, oldest first.
    fn free_expired(&self, now: u64, max: usize) {
        for _ in 0..max {
            // SAFETY: owner-only field; this borrow ends before `free` runs (which may pin and
            // retire, and so push onto the queue).
            let next = unsafe {
                let garbage = &mut *self.garbage.get();
                match garbage.front() {
                    Some(r) if now >= r.stamp + EXPIRY => garbage.pop_front(),
                    _ => None,
                }
            };
            let Some(r) = next else { break };
            // SAFETY: the node was retired once (the `retire` contract), and the epoch moved
            // EXPIRY past its stamp, so no pin can still reach it.
            unsafe { (r.free)(r.word) };
        }
    }

    /// Moves up to `max` orphaned nodes (their stamps kept) into this thread's queue; returns
    /// how many.
    fn adopt_orphans(&self, collector: &Collector, max: usize) -> usize {
        // Relaxed: a hint; the lock below orders the nodes themselves.
        if !collector.has_orphans.load(Ordering::Relaxed) {
            return 0;
        }
        let Ok(mut orphans) = collector.orphans.try_lock() else {
            return 0;
        };
        let take = orphans.len().min(max);
        let start = orphans.len() - take;
        // SAFETY: owner-only field, no other reference live (no free runs while we hold it).
        let garbage = unsafe { &mut *self.garbage.get() };
        garbage.extend(orphans.drain(start..));
        if orphans.is_empty() {
            collector.has_orphans.store(false, Ordering::Relaxed);
        }
        take
    }

    /// Frees everything the pins of other threads allow (orphans included): advances the
    /// epoch up to `EXPIRY + 1` times while garbage waits, then frees every expired node.
    /// Frees nothing while this thread is pinned or collecting (it may be inside a store
    /// operation). Returns how many nodes it still holds.
    ///
    /// # Safety
    /// The calling thread owns this participant (it registered it and has not released it).
    pub(crate) unsafe fn flush(&self, collector: &Collector) -> usize {
        if self.depth.get() != 0 || self.collecting.get() {
            // SAFETY: our caller owns the participant.
            return unsafe { self.pending() };
        }
        let _collecting = Collecting::new(&self.collecting);
        self.adopt_orphans(collector, usize::MAX);
        // SAFETY: owner-only field, no other reference live.
        let newest = unsafe { (*self.garbage.get()).iter().map(|r| r.stamp).max() };
        let mut now = collector.epoch.load(Ordering::Acquire);
        for _ in 0..=EXPIRY {
            if newest.is_none_or(|s| now >= s + EXPIRY) {
                break;
            }
            now = collector.try_advance();
        }
        self.free_expired(now, usize::MAX);
        self.owed.set(0);
        // SAFETY: our caller owns the participant.
        unsafe { self.pending() }
    }

    /// The stamp of the oldest garbage, if any.
    fn oldest(&self) -> Option<u64> {
        // SAFETY: owner-only field, no other reference live.
        unsafe { (*self.garbage.get()).front().map(|r| r.stamp) }
    }

    /// Nodes retired and not yet freed (for tests).
    ///
    /// # Safety
    /// The calling thread owns this participant (it registered it and has not released it).
    pub unsafe fn pending(&self) -> usize {
        // SAFETY: owner-only field, no other reference live.
        unsafe { (*self.garbage.get()).len() }
    }

    /// The owner is going away: release now, or at the last unpin if still pinned.
    ///
    /// # Safety
    /// The calling thread owns this participant (it registered it and has not released it).
    pub(crate) unsafe fn exit(&self, collector: &Collector) {
        if self.depth.get() == 0 {
            self.release(collector);
        } else {
            self.exiting.set(true);
        }
    }

    /// Marks the participant to be released at its last unpin (a thread pinning after its
    /// thread-locals were destroyed).
    ///
    /// # Safety
    /// The calling thread owns this participant (it registered it and has not released it).
    #[cfg(not(caskv_loom))]
    pub(crate) unsafe fn release_on_unpin(&self) {
        self.exiting.set(true);
    }

    /// Hands every node still queued to the collector's orphans (adopted a few at a time by
    /// other threads' steps, all at once by `reclaim`) and gives the participant up. Frees
    /// nothing: this runs in a thread-local destructor, where a value's `Drop` (user code)
    /// could find the thread's other thread-locals gone.
    fn release(&self, collector: &Collector) {
        self.exiting.set(false);
        self.owed.set(0);
        // SAFETY: owner-only field, no other reference live.
        let garbage = unsafe { &mut *self.garbage.get() };
        if !garbage.is_empty() {
            let mut orphans = collector.orphans.lock().unwrap_or_else(|e| e.into_inner());
            orphans.extend(garbage.drain(..));
            // Relaxed: a hint (see `adopt_orphans`).
            collector.has_orphans.store(true, Ordering::Relaxed);
        }
        // The cached blocks go back to the allocator (raw memory: no user code runs).
        // SAFETY: owner-only field; no borrow of it is live (`blocks` borrows end within
        // their callers' push or pop).
        drop(std::mem::replace(
            unsafe { &mut *self.blocks.get() },
            Blocks::new(),
        ));
        // Release: pairs with the Acquire CAS of the next registration.
        self.owned.store(false, Ordering::Release);
    }

    /// The thread's block cache.
    ///
    /// # Safety
    /// The calling thread owns this participant, and the borrow ends before anything else
    /// borrows the cache (its users only push or pop).
    #[cfg(not(caskv_loom))]
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn blocks(&self) -> &mut Blocks {
        // SAFETY: the caller's contract: owner only, no other borrow live.
        unsafe { &mut *self.blocks.get() }
    }
}

/// Marks a participant as collecting while it lives (so a `Drop` that pins or flushes again
/// does not collect re-entrantly); cleared on unwind too.
struct Collecting<'a>(&'a Cell<bool>);

impl<'a> Collecting<'a> {
    fn new(flag: &'a Cell<bool>) -> Self {
        flag.set(true);
        Collecting(flag)
    }
}

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// A pin on a collector: while it lives, nothing retired after it was taken is freed.
pub struct Guard<'c> {
    collector: &'c Collector,
    participant: &'c Participant,
    /// A guard belongs to the thread that pinned.
    _not_send: PhantomData<*mut ()>,
}

impl<'c> Guard<'c> {
    /// Pins `participant` of `collector`.
    ///
    /// # Safety
    /// The calling thread owns `participant`.
    #[inline]
    pub(crate) unsafe fn enter(collector: &'c Collector, participant: &'c Participant) -> Self {
        // SAFETY: the caller's contract: this thread owns `participant`.
        unsafe { participant.enter(collector) };
        Guard {
            collector,
            participant,
            _not_send: PhantomData,
        }
    }

    /// Frees `word`'s node with `free` once no pin taken before now remains.
    ///
    /// # Safety
    /// The node is unreachable for every pin from now on, and retired once.
    #[inline]
    pub unsafe fn retire(&self, word: u64, free: unsafe fn(u64)) {
        // SAFETY: we are pinned on our own participant; the rest is the caller's contract.
        unsafe { self.participant.retire(self.collector, word, free) };
    }
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: a guard is made by `Guard::enter` on its owner's thread and never leaves it
        // (it is not `Send`); it pinned the participant, so it may unpin it.
        if unsafe { self.participant.leave(self.collector) } {
            super::forget_local(self.participant);
        }
    }
}

/// A participant owned until dropped (see [`Collector::register_handle`]).
#[cfg(any(test, caskv_loom))]
pub struct Handle<'c> {
    collector: &'c Collector,
    participant: &'c Participant,
    _not_send: PhantomData<*mut ()>,
}

#[cfg(any(test, caskv_loom))]
impl<'c> Handle<'c> {
    /// Pins.
    pub fn pin(&self) -> Guard<'c> {
        // SAFETY: the handle's thread owns the participant (the handle is not `Send`).
        unsafe { Guard::enter(self.collector, self.participant) }
    }

    /// Nodes this handle retired and has not freed yet.
    pub fn pending(&self) -> usize {
        // SAFETY: the handle registered the participant on this thread (it is not `Send`).
        unsafe { self.participant.pending() }
    }

    /// As [`reclaim`](crate::reclaim), for this handle's garbage.
    pub fn flush(&self) -> usize {
        // SAFETY: as in `pending`.
        unsafe { self.participant.flush(self.collector) }
    }
}

#[cfg(any(test, caskv_loom))]
impl Drop for Handle<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `pending`.
        unsafe { self.participant.exit(self.collector) };
    }
}
