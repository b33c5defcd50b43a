//! The key → cell table: open addressing over an array of slot words, each slot word being a
//! key's version cell (`cell.rs`). Hand-written because the cell *is* the slot: a read is one
//! probe of a run of 8-byte words (a 64-byte line holds eight) and one dependent load of the
//! record the word points to, which holds key, indices, flags and value together. No map
//! crate keeps a CAS-able per-key word inline in its table.
//!
//! # Layout
//! A [`Table`] is a power-of-two array of `AtomicU64` slots probed linearly from
//! `hash & mask`. A key claims the first empty slot of its probe sequence with one CAS from
//! [`EMPTY`](crate::cell::EMPTY) and keeps that slot for the table's life: a delete leaves a
//! tomb holding the key, a re-create writes over the tomb.
//!
//! # Invariants
//! - **One slot per key per table.** Every inserter of a key claims the first empty slot of the
//!   same probe sequence, and claimed slots never become empty again, so two inserters of one
//!   key meet at the same slot and only one CAS wins; a probe may stop at the first empty slot.
//! - **At most half the slots are claimed** (`claimed` is reserved before the CAS and checked
//!   against `capacity / 2`), so every probe sequence meets an empty slot and a copy into a
//!   table at least as large never runs out of room.
//! - **Readers never wait and never leave the table they loaded**: a frozen slot still shows
//!   its last value, which stays current until the next table is published (writers do not
//!   write there before), so a read of an old table is linearizable at a point before the
//!   publication.
//! - **Only the current table is written.** A writer that meets a resize in progress helps it
//!   and starts over in the next table; a batch first releases what it holds (see `batch.rs`).
//!
//! # Resize
//! When a claim would pass half the slots, the claimant sizes the next table for the live keys
//! plus what it needs (twice the size, or the same size once about a quarter of the claimed
//! slots are tombs; never smaller) and installs it in `next`; one thread (the winner of a
//! `sizing` swap) sizes it, the others wait for `next`. Then every writer that arrives helps: it
//! takes a chunk of slots with a `fetch_add` on `cursor`, freezes each slot (waiting while it is
//! locked or
//! settling: only the holder may change it), copies the word of a live record into the next
//! table (the record itself moves by pointer, nothing is cloned), skips tombs, and adds the chunk
//! to `copied`. The thread that completes the last chunk publishes the next table as current and
//! retires the old one: its slot array and its tombs (the records now belong to the next table;
//! tombs are freed only then, because threads that pin while the old table is current can reach
//! them).
//!
//! A writer waits only for chunks other threads have taken, and a copier waits only for a slot's
//! lock holder or settling writer: resizing is the one place where a single-key writer can wait
//! for another thread, besides a batch's lock; readers never do. Because a copier waits for
//! locked slots, a batch that holds locks stalls every writer that meets a resize until it
//! releases them: user code a batch runs while holding locks (`Hash`, `Eq`, `Ord`, `PartialEq`,
//! `Clone` of keys and values) must be short and must not write to the same store.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use crate::cell::{
    self, address, free_node, has_tag, hash_tag, holds_key, Cas, Cell, Record, DELETED, EMPTY,
    FROZEN, LOCKED, UNLOGGED,
};
use crate::sync::epoch::{self, Guard};
use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Backoff, Ordering};

/// The hasher of every store: fast, and seeded per store.
#[cfg(not(caskv_loom))]
type Hasher = foldhash::fast::RandomState;
/// Under loom the seed is fixed: loom replays each execution, which must be deterministic.
#[cfg(caskv_loom)]
type Hasher = foldhash::fast::FixedState;

/// The fewest slots a table has.
#[cfg(not(caskv_loom))]
pub(crate) const MIN_CAPACITY: usize = 16;
/// Under loom a table starts tiny so that a model of three keys exercises a resize.
#[cfg(caskv_loom)]
pub(crate) const MIN_CAPACITY: usize = 4;

/// Slots a resize helper copies per claim of the cursor.
#[cfg(not(caskv_loom))]
const CHUNK: usize = 1024;
#[cfg(caskv_loom)]
const CHUNK: usize = 2;

/// One table generation. See the module docs.
#[repr(C, align(64))]
pub(crate) struct Table {
    slots: Box<[Cell]>,
    mask: usize,
    /// The next table once a resize began (set once, by CAS from null).
    next: AtomicPtr<Table>,
    /// Written by inserts and resizes only: kept off the line readers load.
    counters: Counters,
}

#[repr(C, align(64))]
struct Counters {
    /// Slots claimed or reserved for a claim; at most `capacity / 2` (module invariants).
    claimed: AtomicUsize,
    /// The first slot no resize helper has taken yet.
    cursor: AtomicUsize,
    /// Slots copied to the next table.
    copied: AtomicUsize,
    /// Set by the one thread that sizes and allocates the next table.
    sizing: AtomicBool,
}

/// Where a key stands in one table, for a writer.
pub(crate) enum Located<'g> {
    /// The key's slot and the word loaded from it (Acquire).
    Found { slot: &'g Cell, word: u64 },
    /// The key has no slot; `slot` is the empty slot it would claim.
    Vacant { slot: &'g Cell },
    /// The table is being resized: help, then look again in the next table.
    Resizing,
}

/// What a claim of an empty slot came to.
#[must_use]
pub(crate) enum Claim {
    /// The slot now holds the word.
    Claimed,
    /// Another word landed first (perhaps the same key's): look again.
    Lost,
    /// The table is full enough to resize: help, then look again.
    Resizing,
}

impl Table {
    fn new(capacity: usize) -> Box<Table> {
        debug_assert!(capacity.is_power_of_two() && capacity >= MIN_CAPACITY);
        Box::new(Table {
            slots: (0..capacity).map(|_| Cell::empty()).collect(),
            mask: capacity - 1,
            next: AtomicPtr::new(std::ptr::null_mut()),
            counters: Counters {
                claimed: AtomicUsize::new(0),
                cursor: AtomicUsize::new(0),
                copied: AtomicUsize::new(0),
                sizing: AtomicBool::new(false),
            },
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Whether a resize of this table began.
    #[inline]
    pub(crate) fn resizing(&self) -> bool {
        // Acquire: pairs with the Release store that installed `next`, whose table we may read.
        !self.next.load(Ordering::Acquire).is_null()
    }

    /// Every slot, for a scan.
    pub(crate) fn slots(&self) -> &[Cell] {
        &self.slots
    }

    /// Slot `i`, where `i` is masked by `self.mask`.
    #[inline(always)]
    fn slot(&self, i: usize) -> &Cell {
        debug_assert!(i <= self.mask);
        // SAFETY: `i <= mask` and the array has `mask + 1` slots.
        unsafe { self.slots.get_unchecked(i) }
    }

    /// Frees a retired table: its slot array and the tombs frozen in it. Its records belong to
    /// the next table, which the resize moved them to; its tombs were not moved, so this table
    /// is the only thing that still points to them.
    ///
    /// # Safety
    /// `word` is the address of a `Box<Table>` whose resize completed (every slot frozen), that
    /// no thread can reach any more, freed once.
    unsafe fn free_with_tombs<K>(word: u64) {
        // SAFETY: the caller's contract.
        let table = unsafe {
            Box::from_raw(std::ptr::with_exposed_provenance_mut::<Table>(
                word as usize,
            ))
        };
        for slot in table.slots.iter() {
            // Nobody else can reach the table any more.
            let word = slot.peek();
            if address(word) != 0 && word & DELETED != 0 {
                // SAFETY: a frozen tomb, reachable only from this table (the copy skipped it).
                unsafe { free_node::<K, ()>(word) };
            }
        }
    }
}

/// Aborts the process if dropped while unwinding (a panic where unwinding would leave shared
/// state that other threads wait on forever).
struct AbortOnUnwind(&'static str);

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("caskv: {}; aborting rather than hang every writer", self.0);
            std::process::abort();
        }
    }
}

/// The table of a store: the current generation, the hasher, and (under loom) the stand-in
/// collector. Owns every node reachable from the current table.
pub(crate) struct Raw<K, V> {
    current: AtomicPtr<Table>,
    /// The highest delete index among the tombs resizes dropped: the index of the state of a
    /// key the table has no slot for (its delete, if it had one, is at most this).
    forgotten: AtomicU64,
    hasher: Hasher,
    #[cfg(caskv_loom)]
    garbage: std::sync::Arc<epoch::Garbage>,
    _owns: PhantomData<(K, V)>,
}

// SAFETY: the table owns `K`s and `V`s (in records) that any thread may read through a shared
// reference (so `Sync` is needed) and that the epoch collector may drop on any thread (so
// `Send`); its own state is atomics.
unsafe impl<K: Send + Sync, V: Send + Sync> Send for Raw<K, V> {}
// SAFETY: as above.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for Raw<K, V> {}

impl<K, V> Raw<K, V>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
{
    /// An empty table with room for `capacity` keys before its first resize.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let slots = capacity
            .saturating_mul(2)
            .saturating_add(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 2))
            .max(MIN_CAPACITY);
        Raw {
            current: AtomicPtr::new(Box::into_raw(Table::new(slots))),
            forgotten: AtomicU64::new(0),
            hasher: Hasher::default(),
            #[cfg(caskv_loom)]
            garbage: Default::default(),
            _owns: PhantomData,
        }
    }

    /// Pins the current thread: what every load of a slot or node happens under.
    #[inline]
    pub(crate) fn pin(&self) -> Guard {
        #[cfg(not(caskv_loom))]
        {
            epoch::pin()
        }
        #[cfg(caskv_loom)]
        {
            Guard::new(self.garbage.clone())
        }
    }

    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The current table.
    #[inline]
    pub(crate) fn table<'g>(&self, _guard: &'g Guard) -> &'g Table {
        // Acquire: pairs with the Release store that published the table (in `with_capacity`
        // before the store was shared, or in `finish_copy`), so its slots and every node they
        // point to are visible.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: the current table is retired only after it stopped being current, and
        // through the collector, which waits for `_guard`.
        unsafe { &*ptr }
    }

    /// The word of `key`'s slot in `table`, or `None` when it has none. For readers: frozen
    /// slots are read like any other.
    #[inline]
    pub(crate) fn find<Q>(&self, table: &Table, hash: u64, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let tag = hash_tag(hash);
        let mut i = hash as usize & table.mask;
        // Bounded by the table size; at most half the slots are claimed, so an empty one ends
        // the probe long before.
        let mut left = table.mask;
        loop {
            // The node the word points to is fully visible (`Cell::load`).
            let word = table.slot(i).load();
            if address(word) == 0 {
                return None;
            }
            // SAFETY: the word was loaded from a slot of a table reached under the caller's pin,
            // and it has an address.
            if has_tag(word, tag) && unsafe { holds_key::<K, Q>(word, key) } {
                return Some(word);
            }
            if left == 0 {
                return None;
            }
            left -= 1;
            i = (i + 1) & table.mask;
        }
    }

    /// The slot and word of a present (or being written) key whose hash is `hash`, found
    /// without the key (the eviction policy queues hashes): a probe that hashes each
    /// candidate's key again. `None` when no such key has a slot. (Two present keys with one
    /// 64-bit hash: the first found, which keeps the bound whichever of them goes.)
    pub(crate) fn find_hashed<'g>(&self, table: &'g Table, hash: u64) -> Option<(&'g Cell, u64)>
    where
        K: Hash,
    {
        let tag = hash_tag(hash);
        let mut i = hash as usize & table.mask;
        for _ in 0..=table.mask {
            let slot = table.slot(i);
            let word = slot.load();
            if address(word) == 0 {
                return None;
            }
            // A tomb is passed over: a `Hash` may give distinct keys one hash, and the key
            // sought may sit further on, behind a deleted one with the same hash.
            if word & DELETED == 0 && has_tag(word, tag) {
                // SAFETY: as in `find`.
                let keyed = unsafe { cell::keyed_of::<K>(word) };
                if self.hash(&keyed.key) == hash {
                    return Some((slot, word));
                }
            }
            i = (i + 1) & table.mask;
        }
        None
    }

    /// Where `key` stands in `table`, for a writer.
    pub(crate) fn locate<'g, Q>(&self, table: &'g Table, hash: u64, key: &Q) -> Located<'g>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if table.resizing() {
            return Located::Resizing;
        }
        let tag = hash_tag(hash);
        let mut i = hash as usize & table.mask;
        for _ in 0..=table.mask {
            let slot = table.slot(i);
            let word = slot.load();
            if word & FROZEN != 0 {
                return Located::Resizing;
            }
            if word == EMPTY {
                return Located::Vacant { slot };
            }
            // SAFETY: as in `find`.
            if has_tag(word, tag) && unsafe { holds_key::<K, Q>(word, key) } {
                return Located::Found { slot, word };
            }
            i = (i + 1) & table.mask;
        }
        // Unreachable while at most half the slots are claimed; resizing is the safe answer.
        Located::Resizing
    }

    /// Claims the empty `slot` of `table` for `word` (a new record, tomb or lock of a key that
    /// has no slot there).
    pub(crate) fn claim(&self, table: &Table, slot: &Cell, word: u64) -> Claim {
        // Relaxed: `claimed` is a bound, not a publication; the slot CAS below publishes.
        let reserved = table.counters.claimed.fetch_add(1, Ordering::Relaxed);
        if reserved >= table.capacity() / 2 {
            table.counters.claimed.fetch_sub(1, Ordering::Relaxed);
            return Claim::Resizing;
        }
        match slot.replace(EMPTY, word) {
            Cas::Won => Claim::Claimed,
            Cas::Lost => {
                // Relaxed: as above.
                table.counters.claimed.fetch_sub(1, Ordering::Relaxed);
                Claim::Lost
            }
        }
    }

    /// Helps the resize of `table` (starting it if nobody has) until the next table is current.
    /// `need` is how many keys the caller is about to claim slots for (a batch of new keys
    /// needs room for all of them at once, and its aborted claims left only tombs behind). The
    /// caller must hold no lock and no settling word.
    pub(crate) fn help_resize(&self, table: &Table, need: usize, guard: &Guard) {
        // Acquire: pairs with the Release store that installed `next` (`start_resize`).
        let mut next = table.next.load(Ordering::Acquire);
        if next.is_null() {
            // Relaxed: the flag only elects the sizer; `next` publishes the table.
            if !table.counters.sizing.swap(true, Ordering::Relaxed) {
                next = self.start_resize(table, need);
            } else {
                // Another thread scans and allocates (a large table costs both time and memory,
                // so only one does); wait for its table.
                let mut backoff = Backoff::new();
                loop {
                    // Acquire: as above.
                    next = table.next.load(Ordering::Acquire);
                    if !next.is_null() {
                        break;
                    }
                    backoff.snooze();
                }
            }
        }
        // SAFETY: `next` was installed in `table.next` and is freed only after it was current
        // and then retired through the collector, which waits for `guard`.
        let next_table = unsafe { &*next };
        loop {
            // Relaxed: the cursor only hands out disjoint chunks; `copied` orders the copies.
            let start = table.counters.cursor.fetch_add(CHUNK, Ordering::Relaxed);
            if start >= table.capacity() {
                break;
            }
            let end = (start + CHUNK).min(table.capacity());
            self.copy_chunk(table, next_table, start..end);
            // AcqRel: Release hands our copies to the publisher; Acquire (in the publisher)
            // gathers every helper's copies through the release sequence of `copied`.
            let done = table
                .counters
                .copied
                .fetch_add(end - start, Ordering::AcqRel)
                + (end - start);
            if done == table.capacity() {
                self.finish_copy(table, next, guard);
            }
        }
        let mut backoff = Backoff::new();
        // Acquire: pairs with the Release store in `finish_copy`.
        while std::ptr::eq(self.current.load(Ordering::Acquire), table) {
            backoff.snooze();
        }
    }

    /// Allocates the next table and installs it in `table.next`; returns it. Called only by the
    /// thread that won `table`'s `sizing` flag.
    fn start_resize(&self, table: &Table, need: usize) -> *mut Table {
        // Counted on a live scan: tombs are dropped by the copy, so a table full of tombs is
        // rebuilt at the same size rather than grown.
        let live = table
            .slots
            .iter()
            .filter(|slot| {
                // An estimate for sizing only; the copy loads each word itself.
                let word = slot.peek();
                address(word) != 0 && word & DELETED == 0
            })
            .count();
        // After the copy the new table is at most 3/8 full; it never shrinks, so it can take
        // every claimed slot of the old one (at most half of an equal capacity).
        let capacity = (live.saturating_add(need).saturating_mul(8) / 3 + 1)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 2))
            .max(table.capacity());
        let fresh = Box::into_raw(Table::new(capacity));
        // Release: publishes the fresh table's slots to helpers' Acquire loads of `next`. A
        // plain store: only the thread that won `sizing` gets here, once per table.
        table.next.store(fresh, Ordering::Release);
        fresh
    }

    /// Freezes and copies the slots `range` of `table` into `next`.
    fn copy_chunk(&self, table: &Table, next: &Table, range: std::ops::Range<usize>) {
        // The rehash below runs the keys' `Hash` (user code) with slots of this chunk frozen
        // and the chunk not yet counted: unwinding out of here would leave every writer
        // helping a resize that can never finish. A panicking `Hash` aborts instead, loudly.
        let _abort = AbortOnUnwind("a key's Hash panicked while the table was being resized");
        let mut moved = 0;
        let mut dropped = 0;
        for slot in &table.slots[range] {
            let mut backoff = Backoff::new();
            let word = loop {
                // Its node is read below.
                let word = slot.load();
                debug_assert!(word & FROZEN == 0, "a slot frozen twice");
                if word & (LOCKED | UNLOGGED) != 0 {
                    // Only the holder may change it (cell invariants): wait for it.
                    backoff.snooze();
                    continue;
                }
                if slot.freeze(word) == Cas::Won {
                    break word;
                }
            };
            if address(word) == 0 {
                continue;
            }
            if word & DELETED != 0 {
                // Not copied, and not freed yet: this table is still current, so threads that
                // pin from now on can reach the tomb. It is freed with the table's slot array
                // (`Table::free_with_tombs`), after the table stopped being current.
                // SAFETY: a tomb's word, loaded under our pin; tombs start with a `Header`.
                let index = unsafe { (*cell::node_of::<cell::Header<K>>(word)).meta.modify_index };
                dropped = dropped.max(index);
                continue;
            }
            // SAFETY: a live record's word, loaded under our pin.
            let hash = self.hash(unsafe { &(*cell::node_of::<cell::Keyed<K>>(word)).key });
            Self::insert_moved(next, hash, word);
            moved += 1;
        }
        // Relaxed: published to the next table's users by the Release chain of `copied` and
        // `current`.
        next.counters.claimed.fetch_add(moved, Ordering::Relaxed);
        if dropped != 0 {
            // Relaxed: as above (read by those who find no slot in the next table).
            self.forgotten.fetch_max(dropped, Ordering::Relaxed);
        }
    }

    /// Puts a moved word into the first empty slot of its probe sequence in `next`. Other
    /// helpers insert other keys concurrently; nobody else writes `next` yet.
    fn insert_moved(next: &Table, hash: u64, word: u64) {
        let mut i = hash as usize & next.mask;
        loop {
            if next.slots[i].place(word) == Cas::Won {
                return;
            }
            i = (i + 1) & next.mask;
        }
    }

    /// Publishes `next` as the current table and retires `table`, with its tombs.
    fn finish_copy(&self, table: &Table, next: *mut Table, guard: &Guard) {
        // AcqRel: Release pairs with the Acquire in `table()`: every copied word, and every
        // node it points to, is visible to a thread that loads the new table. Acquire: the
        // pointer we get back carries the table's allocation, which we free later.
        let old = self.current.swap(next, Ordering::AcqRel);
        debug_assert!(
            std::ptr::eq(old, table),
            "only the current table is resized"
        );
        let old = old.expose_provenance() as u64;
        // SAFETY: the old table is no longer current, so threads that pin from now on cannot
        // reach it or the tombs frozen in it; only this thread (the one that completed the
        // copy) retires it, and every one of its slots is frozen.
        unsafe { epoch::retire(guard, old, Table::free_with_tombs::<K>) };
    }

    /// The highest delete index of a tomb a resize dropped (0: none): the index of an absent
    /// key's state when the table has no tomb for it. Read after the table was loaded.
    pub(crate) fn forgotten(&self) -> u64 {
        // Relaxed: a resize's `fetch_max` happens before the publication of the table that
        // no longer has the tombs (see the copy), which the caller loaded with Acquire.
        self.forgotten.load(Ordering::Relaxed)
    }

    /// Calls `f` with the key, slot and word of every claimed slot of the current table.
    /// Weakly consistent: a slot written during the scan may be seen before or after the write.
    pub(crate) fn for_each<'g>(&self, guard: &'g Guard, mut f: impl FnMut(&'g K, &'g Cell, u64)) {
        let table = self.table(guard);
        for slot in table.slots() {
            let word = slot.load();
            if address(word) == 0 {
                continue;
            }
            // SAFETY: a claimed slot's word, loaded under `guard`: its node (and a lock's key)
            // lives for the pin.
            let keyed = unsafe { cell::keyed_of::<K>(word) };
            f(&keyed.key, slot, word);
        }
    }

    /// The record of a word whose node is a record, for a writer that holds it.
    ///
    /// # Safety
    /// `word` points to a record live for `'g`.
    pub(crate) unsafe fn record(word: u64, _guard: &Guard) -> &Record<K, V> {
        // SAFETY: the caller's contract.
        unsafe { &*cell::node_of::<Record<K, V>>(word) }
    }
}

impl<K, V> Drop for Raw<K, V> {
    fn drop(&mut self) {
        // Relaxed: `&mut self`, no other thread can touch the table (loom's atomics have no
        // `get_mut`).
        let table = self.current.load(Ordering::Relaxed);
        // SAFETY: `&mut self`: no thread can reach the table or its nodes any more; the current
        // table owns every node in it (older tables were retired with their slot arrays only).
        unsafe {
            let t = Box::from_raw(table);
            for slot in t.slots.iter() {
                // We own the table exclusively.
                let word = slot.peek() & !FROZEN;
                // A lock is released before the batch that took it returns or unwinds.
                debug_assert!(word & (LOCKED | UNLOGGED) == 0);
                free_node::<K, V>(word);
            }
            let next = t.next.load(Ordering::Relaxed);
            if !next.is_null() {
                // A resize begun but not finished: impossible while no operation is in flight
                // (nothing in a resize can panic), and the moved words are in `t` too, so only
                // the array is freed.
                drop(Box::from_raw(next));
            }
        }
    }
}
