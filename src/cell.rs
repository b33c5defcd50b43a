//! The per-key version cell: one 64-bit slot word of the table, whose value is the key's whole
//! state, and the heap nodes it points to.
//!
//! # The slot word
//! ```text
//!  63            48 47                               4   3      2       1        0
//! +----------------+----------------------------------+--------+-------+--------+--------+
//! |   hash tag     |  address of a 16-aligned node     | FROZEN |DELETED|UNLOGGED| LOCKED |
//! +----------------+----------------------------------+--------+-------+--------+--------+
//! ```
//! The **hash tag** (the top 16 bits of the key's hash) is written when the slot is claimed and
//! never changes while the slot's table lives: a probe skips slots of other keys without
//! touching their nodes, and a lookup of an absent key touches no node at all (one cache line
//! of slots, usually). The node is one of:
//!
//! | word | state | node | a reader sees |
//! |---|---|---|---|
//! | `0` | **empty**: never claimed in this table | — | absent, and the probe stops |
//! | tag \| [`Record`] | a committed **version** | key, hash, indices, flags, value inline | that version |
//! | tag \| [`Tomb`] \| `DELETED` | **deleted**: the slot stays the key's | key, hash, the delete's index | absent |
//! | tag \| [`Lock`] \| `LOCKED` | held by a **batch** in flight | a pointer to the key, the `Txn`, `before` and `after` words (in the batch's one block) | `before` until the batch's one status word flips to committed, then `after` |
//! | any of the above \| `UNLOGGED` | **settling** (journaled stores): written, its journal record not yet taken | as untagged | what it would see untagged |
//! | any settled, unlocked state \| `FROZEN` | being **moved** to the next table by a resize | as unfrozen | what it would see unfrozen |
//!
//! # Transitions
//! - Single-key write: Acquire-load the word, decide from what it shows, take an index from the
//!   global counter, CAS the word to a new [`Record`] (AcqRel). A locked or settling word makes
//!   the writer wait; a frozen one makes it help the resize and start again in the next table.
//! - Delete: CAS a version to a [`Tomb`] tagged `DELETED` (the old record is retired). The slot
//!   stays bound to the key, so a re-create CASes from the tomb: a writer that loaded the old
//!   version can never land a write after the delete, because its expected word is gone.
//! - Batch: CAS the word to `Lock | LOCKED`; only the lock holder changes it again, with a plain
//!   store (see `batch.rs`).
//! - Journaled store (see [`crate::journal`]): a single-key write or delete installs its word
//!   tagged `UNLOGGED`, hands the mutation to the journal, then clears the tag with a plain
//!   store ([`Settling`]); a batch hands its record over while it still holds its locks.
//! - Resize: the copier waits while a word is locked or settling, then CASes it to itself plus
//!   `FROZEN`; no one changes a frozen word again (see `table.rs`).
//!
//! # Invariants
//! - A claimed slot never becomes empty again, and a slot's hash tag and key never change while
//!   its table lives (so a probe that passed a slot never needs to look at it again).
//! - Only the lock holder changes a `LOCKED` word; only the installer changes an `UNLOGGED`
//!   word (to the same word untagged); nobody changes a `FROZEN` word.
//! - A node reachable from a slot (or from a published lock's `before`/`after`) is freed only
//!   through the epoch collector after it became unreachable, so a pinned reader can always
//!   dereference what it loaded. Records and tombs are immutable once published.
//! - Per key, `modify_index` strictly increases: every writer takes its index *after* its
//!   Acquire load of the word it replaces, and that word's index was taken before it was
//!   published, so the counter's single modification order puts the new index above it.

use std::alloc::Layout;
use std::borrow::Borrow;

use crate::recycle;
use crate::sync::epoch::Guard;
use crate::sync::{epoch, AtomicU64, AtomicU8, HintU64, Ordering};

/// The word of an empty slot.
pub(crate) const EMPTY: u64 = 0;
/// The word points to a [`Lock`].
pub(crate) const LOCKED: u64 = 1;
/// Written, but its journal record is not taken yet (journaled stores only).
pub(crate) const UNLOGGED: u64 = 2;
/// The word points to a [`Tomb`]: the key is absent.
pub(crate) const DELETED: u64 = 4;
/// The word is being moved to the next table; nobody changes it any more.
pub(crate) const FROZEN: u64 = 8;
/// The node address bits. Nodes are 16-aligned (the four low bits are the tags above) and live
/// below 2^48, as every user-space address does on x86-64 and on aarch64 Linux without
/// top-byte pointer tagging (checked when a node is made: a target whose allocator tags the
/// top byte of pointers, such as Android with memory tagging, is not supported).
const ADDRESS: u64 = 0x0000_FFFF_FFFF_FFF0;
/// Where the hash tag sits.
const TAG_SHIFT: u32 = 48;

/// The hash tag of `hash` in slot-word position.
#[inline]
pub(crate) fn hash_tag(hash: u64) -> u64 {
    hash & !(u64::MAX >> (64 - TAG_SHIFT))
}

/// The hash tag `word` carries, in slot-word position (as made by [`hash_tag`]).
#[inline]
pub(crate) fn tag_of(word: u64) -> u64 {
    hash_tag(word)
}

/// Whether `word` carries the hash tag `tag` (as made by [`hash_tag`]).
#[inline]
pub(crate) fn has_tag(word: u64, tag: u64) -> bool {
    word & !(u64::MAX >> (64 - TAG_SHIFT)) == tag
}

/// The node address of a word (0 for an empty slot).
#[inline]
pub(crate) fn address(word: u64) -> u64 {
    word & ADDRESS
}

/// A word for node `ptr` with the hash tag `tag` and the state bits `bits`.
#[inline]
pub(crate) fn word_of<T>(ptr: *mut T, tag: u64, bits: u64) -> u64 {
    let addr = ptr.expose_provenance() as u64;
    assert!(
        addr & !ADDRESS == 0,
        "caskv: node address {addr:#x} is not 16-aligned below 2^48"
    );
    addr | tag | bits
}

/// The node of a word, as a raw pointer of the type the word's bits say it is.
#[inline]
pub(crate) fn node_of<T>(word: u64) -> *mut T {
    std::ptr::with_exposed_provenance_mut(address(word) as usize)
}

/// The part every node starts with: what a probe compares once the slot's hash tag matched.
/// No hash is stored: a tag matches a key that is not the one sought once in 65,536, and a
/// resize hashes the key again.
#[repr(C)]
pub(crate) struct Keyed<K> {
    pub(crate) key: K,
}

/// The indices and flags of a version (or, in a [`Tomb`], of a delete).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) modify_index: u64,
    pub(crate) create_index: u64,
    pub(crate) flags: u64,
}

/// The common prefix of [`Record`] and [`Tomb`].
#[repr(C)]
pub(crate) struct Header<K> {
    pub(crate) keyed: Keyed<K>,
    pub(crate) meta: Meta,
}

/// An immutable committed version of a key, the value inline: what a read dereferences, in one
/// allocation (the slot word points here). Only its [`Life`] word's hint bits change after it
/// is published.
#[repr(C, align(16))]
pub(crate) struct Record<K, V> {
    pub(crate) header: Header<K>,
    pub(crate) life: Life,
    pub(crate) value: V,
}

/// A record's deadline and its eviction hints, in one word: `deadline (48 bits, ms since the
/// UNIX epoch, 0 = never) | frequency (2 bits)`, the rest 0.
///
/// # Invariants
/// The deadline is written before the record is published and never changes (so it needs no
/// ordering beyond the publishing CAS's). The hint bits are heuristics: readers bump the
/// frequency with a plain store when it is below its maximum (a lost bump is harmless), and the
/// eviction policy, under its shard's lock, lowers it.
pub(crate) struct Life(HintU64);

impl Life {
    /// The deadline's bits.
    pub(crate) const DEADLINE: u64 = (1 << 48) - 1;
    /// One access in the frequency field.
    pub(crate) const FREQ_ONE: u64 = 1 << 48;
    /// The frequency field (0..=3).
    pub(crate) const FREQ: u64 = 3 << 48;

    /// A word with `deadline` (clamped to 48 bits) and the hint bits `hints`.
    #[inline]
    pub(crate) fn new(deadline: u64, hints: u64) -> Self {
        Life(HintU64::new(
            deadline.min(Self::DEADLINE) | (hints & !Self::DEADLINE),
        ))
    }

    /// The whole word.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        // Relaxed: the deadline is ordered by the record's publication; hints need no order.
        self.0.load(Ordering::Relaxed)
    }

    /// When the version expires (ms since the UNIX epoch); 0: never.
    #[inline]
    pub(crate) fn deadline(&self) -> u64 {
        self.get() & Self::DEADLINE
    }

    /// The hint bits (the frequency).
    #[inline]
    pub(crate) fn hints(&self) -> u64 {
        self.get() & !Self::DEADLINE
    }

    /// Records an access: bumps the frequency unless it is at its maximum (no write then, so a
    /// hot key's line is not written on every hit).
    #[inline]
    pub(crate) fn touch(&self) {
        let w = self.get();
        if w & Self::FREQ != Self::FREQ {
            // Relaxed, and a plain store: racing bumps may be lost, which a hint tolerates.
            self.0.store(w + Self::FREQ_ONE, Ordering::Relaxed);
        }
    }

    /// Replaces the hint bits (the policy, under its shard's lock); the deadline is kept.
    #[inline]
    pub(crate) fn set_hints(&self, hints: u64) {
        let w = self.get();
        // Relaxed: as in `touch`.
        self.0.store(
            (w & Self::DEADLINE) | (hints & !Self::DEADLINE),
            Ordering::Relaxed,
        );
    }
}

/// A deleted key: its key (so the slot stays the key's) and the index of the delete in
/// `meta.modify_index` (0 when a batch claimed the slot for an absent key and left it absent).
#[repr(C, align(16))]
pub(crate) struct Tomb<K> {
    pub(crate) header: Header<K>,
}

/// A batch's hold on one slot: one of the locks laid out after the batch's [`Txn`], in the
/// same block (a batch makes one allocation and one retire for its status word and all its
/// locks, and clones no key).
///
/// `keyed` is the key the slot holds: that of the `before` node, or, for a slot the batch
/// claimed empty, that of the spare tomb it keeps for it; both stay live while the lock is in
/// its slot (the holder retires them only after releasing it). `before` is the word the batch
/// replaced and never changes once published. `after` is written by the lock holder before it
/// flips [`Txn::state`] to committed, and is read only by threads that saw the committed state.
/// `txn` is the block's status word: the holder retires the block through the collector only
/// after every lock in it is out of its slot, so a thread pinned while it could reach this lock
/// can still read it.
#[repr(C, align(16))]
pub(crate) struct Lock<K> {
    pub(crate) keyed: *const Keyed<K>,
    pub(crate) txn: *const Txn,
    pub(crate) before: u64,
    pub(crate) after: AtomicU64,
}

impl<K> Lock<K> {
    /// The key and hash of the slot this lock holds.
    ///
    /// # Safety
    /// The lock is published (in a slot, or held by its batch): before that its `keyed` is
    /// null or not yet final.
    pub(crate) unsafe fn keyed(&self) -> &Keyed<K> {
        debug_assert!(!self.keyed.is_null(), "the key of an unpublished lock");
        // SAFETY: the caller's contract: a published lock's `keyed` points to `before`'s node
        // or to the spare tomb, both live while the lock can be reached (the `Lock`
        // invariants).
        unsafe { &*self.keyed }
    }
}

/// The one commit point of a batch, followed in its block by room for the batch's locks.
///
/// # Invariant
/// `state` goes from [`Txn::PENDING`] to [`Txn::COMMITTED`] at most once and never back; a
/// batch that aborts never leaves `PENDING`. The block (16-aligned, as every node) lives until
/// the collector frees it after the batch released its last lock. Each lock in it is
/// published in at most one slot, at most once.
#[repr(C, align(16))]
pub(crate) struct Txn {
    state: AtomicU8,
    /// Room for this many locks follows.
    locks: u32,
}

impl Txn {
    pub(crate) const PENDING: u8 = 0;
    pub(crate) const COMMITTED: u8 = 1;

    /// The block of a `Txn` with room for `locks` locks.
    fn layout(locks: u32) -> Layout {
        // A `Lock`'s layout does not depend on its key type (it holds pointers and words).
        let room = Layout::array::<Lock<()>>(locks as usize)
            .and_then(|room| Layout::new::<Txn>().extend(room))
            .expect("a batch's locks fit in memory");
        room.0.pad_to_align()
    }

    /// A new pending batch with room for `locks` locks (the batch's keys), in one block. Every
    /// lock starts unpublished: no key, no `before`, no `after`.
    pub(crate) fn with_locks(locks: usize) -> *mut Txn {
        let locks = u32::try_from(locks).expect("a batch's keys are bounded by max_batch");
        let txn = recycle::block(Self::layout(locks)).cast::<Txn>();
        // SAFETY: a fresh block laid out as `Txn` and then `locks` locks (`layout`), ours
        // alone; every field is written before the block is shared.
        unsafe {
            txn.write(Txn {
                state: AtomicU8::new(Self::PENDING),
                locks,
            });
            for i in 0..locks as usize {
                Self::lock::<()>(txn, i).write(Lock {
                    keyed: std::ptr::null(),
                    txn,
                    before: EMPTY,
                    after: AtomicU64::new(EMPTY),
                });
            }
        }
        txn
    }

    /// Lock `i` of the block of `txn`.
    ///
    /// # Safety
    /// `txn` was made by [`Txn::with_locks`] with room for more than `i` locks, and is live.
    pub(crate) unsafe fn lock<K>(txn: *mut Txn, i: usize) -> *mut Lock<K> {
        // SAFETY: the caller's contract; locks follow the header at `size_of::<Txn>()` (a
        // multiple of a lock's alignment, 16: both are `align(16)`), in bounds of the block
        // (`layout` puts them there).
        unsafe {
            debug_assert!(i < (*txn).locks as usize);
            txn.add(1).cast::<Lock<K>>().add(i)
        }
    }

    /// The word the collector retires a `Txn` as (its address).
    pub(crate) fn word(txn: *const Txn) -> u64 {
        txn.expose_provenance() as u64
    }

    /// Frees a `Txn` retired as [`Txn::word`], with its locks.
    ///
    /// # Safety
    /// `word` is a `Txn` made by [`Txn::with_locks`], unreachable by every thread (none of its
    /// locks in a slot), freed once.
    pub(crate) unsafe fn free(word: u64) {
        let txn = std::ptr::with_exposed_provenance_mut::<Txn>(word as usize);
        // SAFETY: the caller's contract: every lock was initialized by `with_locks`; they own
        // nothing (pointers and words) but are dropped for the atomics' sake (loom's track
        // their objects).
        unsafe {
            let locks = (*txn).locks;
            for i in 0..locks as usize {
                std::ptr::drop_in_place(Self::lock::<()>(txn, i));
            }
            std::ptr::drop_in_place(txn);
            recycle::unblock(txn.cast::<u8>(), Self::layout(locks));
        }
    }

    /// The batch's commit point.
    pub(crate) fn commit(&self) {
        // Release: pairs with the Acquire in `is_committed`, so a reader that sees COMMITTED
        // also sees every `Lock::after` the holder stored before this.
        self.state.store(Self::COMMITTED, Ordering::Release);
    }

    pub(crate) fn is_committed(&self) -> bool {
        // Acquire: pairs with the Release store in `commit`.
        self.state.load(Ordering::Acquire) == Self::COMMITTED
    }
}

/// A key's version cell: one slot of the table, whose word is the key's whole state (see the
/// module docs). The word is private: every transition is a method here, with its memory
/// ordering justified once, and every CAS transition returns a [`Cas`] the caller must look
/// at (as tokio's task state does).
#[repr(transparent)]
pub(crate) struct Cell(AtomicU64);

/// Whether a CAS transition of a [`Cell`] took.
#[must_use = "a lost CAS means the cell changed: look again or give up"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cas {
    /// The cell now holds the new word.
    Won,
    /// The cell did not hold the expected word; nothing changed.
    Lost,
}

impl Cas {
    fn of(result: Result<u64, u64>) -> Cas {
        match result {
            Ok(_) => Cas::Won,
            Err(_) => Cas::Lost,
        }
    }
}

impl Cell {
    /// An empty cell (never claimed).
    pub(crate) fn empty() -> Cell {
        Cell(AtomicU64::new(EMPTY))
    }

    /// The cell's word, for a reader, a writer or a copier that will read its node.
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        // Acquire: pairs with the Release of the transition that installed the word (every
        // CAS and store below), so the node's fields written before it are visible.
        self.0.load(Ordering::Acquire)
    }

    /// The cell's word, for an estimate or an exclusive owner (a table being freed); its node
    /// must not be read through it unless the caller is ordered after the writer otherwise.
    #[inline]
    pub(crate) fn peek(&self) -> u64 {
        // Relaxed: see above.
        self.0.load(Ordering::Relaxed)
    }

    /// A writer's CAS from the word it decided on (`current`) to its new node's word: a new
    /// version, a tomb, or a first word claiming an empty cell (`current` = [`EMPTY`]).
    #[inline]
    pub(crate) fn replace(&self, current: u64, new: u64) -> Cas {
        // AcqRel: Release publishes the new node's fields to the Acquire loads of readers,
        // writers and copiers; Acquire orders this CAS after the word it replaces, like the
        // load that found it.
        Cas::of(
            self.0
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire),
        )
    }

    /// A batch's CAS from a version, a tomb or empty (`current`) to its `LOCKED` word; from
    /// then on only the batch changes the cell ([`Cell::release`]).
    #[inline]
    pub(crate) fn lock(&self, current: u64, lock: u64) -> Cas {
        debug_assert!(lock & LOCKED != 0 && current & (LOCKED | UNLOGGED | FROZEN) == 0);
        // AcqRel: as `replace`: Release publishes the lock (and its `before`) to readers'
        // Acquire loads; Acquire orders us after the word we replace.
        Cas::of(
            self.0
                .compare_exchange(current, lock, Ordering::AcqRel, Ordering::Acquire),
        )
    }

    /// The lock holder's release: stores `next` (its `after` or `before`) over its lock.
    #[inline]
    pub(crate) fn release(&self, next: u64) {
        debug_assert!(next & (LOCKED | UNLOGGED | FROZEN) == 0);
        // Release: pairs with the Acquire loads of readers, writers and copiers, publishing
        // `next` (and, for readers that then see no lock, everything the batch did before). A
        // plain store suffices: only the lock holder changes a LOCKED word.
        self.0.store(next, Ordering::Release);
    }

    /// The installer's settle: stores its `UNLOGGED` word untagged once the journal took it.
    #[inline]
    pub(crate) fn settle(&self, installed: u64) {
        debug_assert!(installed & UNLOGGED != 0, "settling a settled word");
        // Release: pairs with the Acquire load of every later writer or copier, so one that
        // sees the settled word also sees everything the journal did while the key settled.
        // A plain store suffices: only the installer changes an UNLOGGED word.
        self.0.store(installed & !UNLOGGED, Ordering::Release);
    }

    /// A resize copier's freeze of a settled, unlocked word: from then on nobody changes it.
    #[inline]
    pub(crate) fn freeze(&self, current: u64) -> Cas {
        debug_assert!(current & (LOCKED | UNLOGGED | FROZEN) == 0);
        // AcqRel: Acquire as `load`; Release orders our freeze before the copy becomes visible
        // through the resize's `copied` counter.
        Cas::of(self.0.compare_exchange(
            current,
            current | FROZEN,
            Ordering::AcqRel,
            Ordering::Acquire,
        ))
    }

    /// A resize copier's placing of a moved word into an empty cell of the next table, which
    /// only copiers write until it is published.
    #[inline]
    pub(crate) fn place(&self, word: u64) -> Cas {
        // Release on success: publishes nothing new (the node was published before), but
        // orders the word before the copier's `copied` increment for the publisher. Relaxed on
        // failure: another copier's word, which the caller only steps over.
        Cas::of(
            self.0
                .compare_exchange(EMPTY, word, Ordering::Release, Ordering::Relaxed),
        )
    }
}

/// A slot word as a caller must treat it.
pub(crate) enum State<'g, K, V> {
    /// No version: the slot is empty (a write may claim it) or holds a tomb.
    Absent,
    /// A committed version.
    Present(&'g Record<K, V>),
    /// Held by a batch in flight: writers wait for the holder (readers use [`visible`]).
    Locked,
    /// Written but not yet journaled: writers wait for the installer (readers use [`visible`]).
    Unlogged,
    /// Being moved by a resize: readers see `visible`, writers help and retry in the next table.
    Frozen(Option<&'g Record<K, V>>),
}

/// Classifies a word loaded (Acquire) from a slot of a table the caller reached under `guard`.
///
/// # Safety
/// `word` was loaded from a slot under `guard`, or is a `before`/`after` word of a lock loaded
/// so (module invariants: its node is then live for `'g`).
#[inline]
pub(crate) unsafe fn classify<'g, K, V>(word: u64, guard: &'g Guard) -> State<'g, K, V> {
    if word & LOCKED != 0 {
        return State::Locked;
    }
    if word & UNLOGGED != 0 {
        return State::Unlogged;
    }
    // SAFETY: forwarded from the caller.
    let visible = unsafe { visible(word, guard) };
    if word & FROZEN != 0 {
        return State::Frozen(visible);
    }
    match visible {
        Some(r) => State::Present(r),
        None => State::Absent,
    }
}

/// What a reader sees through `word`: never waits, never writes.
///
/// # Safety
/// As [`classify`].
#[inline]
pub(crate) unsafe fn visible<K, V>(word: u64, guard: &Guard) -> Option<&Record<K, V>> {
    let _ = guard;
    if word & (LOCKED | DELETED) == 0 {
        if address(word) == 0 {
            return None;
        }
        // SAFETY: an unlocked, undeleted word with an address points to a `Record`, live for
        // 'g (the caller's contract).
        return Some(unsafe { &*node_of::<Record<K, V>>(word) });
    }
    if word & DELETED != 0 {
        return None;
    }
    // SAFETY: a LOCKED word points to a `Lock`, live for 'g (the caller's contract).
    let lock = unsafe { &*node_of::<Lock<K>>(word) };
    // SAFETY: a lock's `Txn` is retired only after the lock left its slot, so it outlives
    // every pin that reached the lock (the `Lock` invariants).
    let txn = unsafe { &*lock.txn };
    let side = if txn.is_committed() {
        // Relaxed: ordered by the Acquire in `is_committed` (the holder stored `after` before
        // its Release of COMMITTED).
        lock.after.load(Ordering::Relaxed)
    } else {
        lock.before
    };
    // A lock's sides are never locked themselves, so this recursion is one level deep.
    // SAFETY: `before` stays allocated until the holder replaced the lock and retired it
    // through the collector; `after` is allocated before COMMITTED is published and retired
    // only through the collector. We are pinned by `guard`.
    unsafe { visible(side, guard) }
}

/// What a reader sees through `word`, with the index of that state: a version's
/// `modify_index`, a tomb's delete index, 0 for an empty slot (or one a batch claimed and left
/// absent). Never waits, never writes.
///
/// # Safety
/// As [`classify`].
pub(crate) unsafe fn seen<K, V>(word: u64, guard: &Guard) -> (u64, Option<&Record<K, V>>) {
    if address(word) == 0 {
        return (0, None);
    }
    if word & LOCKED != 0 {
        // SAFETY: as in `visible`: a LOCKED word points to a published `Lock` whose `Txn`
        // outlives every pin that reached it.
        let lock = unsafe { &*node_of::<Lock<K>>(word) };
        // SAFETY: as above.
        let side = if unsafe { &*lock.txn }.is_committed() {
            // Relaxed: ordered by the Acquire in `is_committed`.
            lock.after.load(Ordering::Relaxed)
        } else {
            lock.before
        };
        // SAFETY: as in `visible`; a lock's sides are never locked, so this recursion is one
        // level deep.
        return unsafe { seen(side, guard) };
    }
    // SAFETY: records and tombs start with a `Header<K>` (`repr(C)`), live for the caller's pin.
    let index = unsafe { &*node_of::<Header<K>>(word) }.meta.modify_index;
    // SAFETY: forwarded from the caller; an unlocked word.
    (index, unsafe { visible(word, guard) })
}

/// Whether the node of `word` (not empty) belongs to `key`.
///
/// # Safety
/// As [`classify`], and `address(word) != 0`.
#[inline]
pub(crate) unsafe fn holds_key<K, Q>(word: u64, key: &Q) -> bool
where
    K: Borrow<Q>,
    Q: Eq + ?Sized,
{
    // SAFETY: forwarded from the caller.
    let keyed = unsafe { keyed_of::<K>(word) };
    keyed.key.borrow() == key
}

/// The key of the node of `word` (not empty): a record's or a tomb's own, a lock's
/// through its `keyed` pointer.
///
/// # Safety
/// As [`classify`], and `address(word) != 0`.
#[inline]
pub(crate) unsafe fn keyed_of<'g, K>(word: u64) -> &'g Keyed<K> {
    if word & LOCKED != 0 {
        // SAFETY: a LOCKED word in a slot points to a published `Lock`, live for the caller's
        // pin, whose `keyed` is live with it.
        return unsafe { (*node_of::<Lock<K>>(word)).keyed() };
    }
    // SAFETY: records and tombs start with a `Keyed<K>` (`repr(C)`), live for the caller's pin.
    unsafe { &*node_of::<Keyed<K>>(word) }
}

impl<K, V> Record<K, V> {
    /// A new record on the heap, as a slot word with hash tag `tag` (from [`hash_tag`]) and
    /// `bits`.
    #[inline]
    pub(crate) fn word(tag: u64, key: K, value: V, meta: Meta, life: Life, bits: u64) -> u64 {
        let ptr = recycle::boxed(Record {
            header: Header {
                keyed: Keyed { key },
                meta,
            },
            life,
            value,
        });
        word_of(ptr, tag, bits)
    }
}

impl<K> Tomb<K> {
    /// A new tomb on the heap, as a slot word with hash tag `tag`, tagged `DELETED` plus
    /// `bits`.
    #[inline]
    pub(crate) fn word(tag: u64, key: K, delete_index: u64, bits: u64) -> u64 {
        let ptr = recycle::boxed(Tomb {
            header: Header {
                keyed: Keyed { key },
                meta: Meta {
                    modify_index: delete_index,
                    create_index: 0,
                    flags: 0,
                },
            },
        });
        word_of(ptr, tag, DELETED | bits)
    }
}

/// Frees the node of `word` now: a tomb or a record, as the word's bits say (or nothing for an
/// empty word). Every such node is made by `recycle::boxed` in its `word` function. Never a
/// lock: locks live in their batch's [`Txn`] block and are freed with it.
///
/// # Safety
/// No thread can reach the node any more, and it is freed once.
pub(crate) unsafe fn free_node<K, V>(word: u64) {
    if address(word) == 0 {
        return;
    }
    debug_assert!(
        word & LOCKED == 0,
        "locks are freed with their batch's Txn block"
    );
    // SAFETY: the caller's contract, and the bits name the node's type in every branch.
    unsafe {
        if word & DELETED != 0 {
            recycle::drop_boxed(node_of::<Tomb<K>>(word))
        } else {
            recycle::drop_boxed(node_of::<Record<K, V>>(word))
        }
    }
}

/// Hands the node of `word` (a record or a tomb, by its bits; never a lock, see [`free_node`])
/// to the epoch collector, which frees it once every thread pinned before now has unpinned.
///
/// # Safety
/// The node is unreachable for every thread that pins from now on (it was replaced in its
/// slot, or its table is retired and no other table holds it), and it is retired once.
pub(crate) unsafe fn retire<K, V>(word: u64, guard: &Guard)
where
    K: Send + 'static,
    V: Send + 'static,
{
    if address(word) != 0 {
        // SAFETY: the caller's contract; `free_node` frees the node by its bits.
        unsafe { epoch::retire(guard, word, free_node::<K, V>) };
    }
}

/// A node this thread made and has not published: freed (by its word's bits) if the write
/// gives up, whether its condition failed after a lost race or user code panicked.
pub(crate) struct Unpublished<K, V> {
    pub(crate) word: u64,
    _owns: std::marker::PhantomData<(K, V)>,
}

impl<K, V> Unpublished<K, V> {
    pub(crate) fn new(word: u64) -> Self {
        Unpublished {
            word,
            _owns: std::marker::PhantomData,
        }
    }

    /// The node is in a slot now: hands its word over and forgets it.
    pub(crate) fn publish(&mut self) -> u64 {
        std::mem::replace(&mut self.word, EMPTY)
    }
}

impl<K, V> Drop for Unpublished<K, V> {
    fn drop(&mut self) {
        // SAFETY: the node was made by this thread and never published.
        unsafe { free_node::<K, V>(self.word) }
    }
}

/// Settles a word this thread installed tagged [`UNLOGGED`] when dropped: after the journal
/// took the record, or while unwinding from a journal that panicked, so the key never stays
/// settling (and its writers never wait) forever.
pub(crate) struct Settling<'c> {
    cell: &'c Cell,
    installed: u64,
}

impl<'c> Settling<'c> {
    pub(crate) fn new(cell: &'c Cell, installed: u64) -> Self {
        debug_assert!(installed & UNLOGGED != 0, "settling a settled word");
        Settling { cell, installed }
    }
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        self.cell.settle(self.installed);
    }
}
