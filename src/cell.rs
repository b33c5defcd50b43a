//! The per-key version cell: one atomic pointer whose value is the key's whole state.
//!
//! # State layout
//! A cell's `head` is a crossbeam-epoch pointer that is one of:
//!
//! | head | state | a reader sees |
//! |---|---|---|
//! | null, tag 0 | live, no value (freshly inserted, or held by a batch for an absent key) | absent |
//! | null, tag [`RETIRED`] | **terminal**: the key was deleted through this cell | absent |
//! | `Node::Version` | a committed version | that version |
//! | `Node::Locked` | held by a batch in flight | `before` until the batch's one status word flips to committed, then `after` |
//! | any of the above, tag [`UNLOGGED`] | **settling** (journaled stores only): written, its journal record not yet taken | what it would see untagged |
//!
//! # Transitions
//! - Single-key write: load `head` (Acquire), decide from what it shows, take an index from the
//!   global counter, CAS `head` from what was loaded to the new version (AcqRel). A `Locked`
//!   head makes the writer wait; a `RETIRED` head makes it unlink the cell from the index and
//!   start again with a fresh cell.
//! - Delete: CAS a version to `RETIRED`, then unlink the cell from the index. Because `RETIRED`
//!   is terminal, a writer that still holds the old cell can never land a write in it: its CAS
//!   fails, it sees `RETIRED`, and retries on a fresh cell. A delete racing a re-create never
//!   loses the re-create.
//! - Batch: CAS `head` to a `Locked` node naming the transaction and the `before` it replaced;
//!   only the lock holder changes a `Locked` head again, with a plain store (see `batch.rs`).
//! - Journaled store (see [`crate::journal`]): a single-key write or delete installs its head
//!   tagged [`UNLOGGED`], hands the mutation to the journal, then clears the tag with a plain
//!   store ([`Cell::settle`]); a batch hands its record over while it still holds its locks.
//!   Every writer treats a settling head like a locked one and waits, so per key the journal
//!   receives mutations in the order they were applied. A deleted cell is unlinked only after
//!   it settled, so a re-create on a fresh cell cannot reach the journal before the delete.
//!
//! # Invariants
//! - `RETIRED` is terminal, and a cell is unlinked from the index only once it is `RETIRED`
//!   and settled.
//! - Only the writer that installed an `UNLOGGED` head changes it again (to the same head
//!   untagged); nobody else CASes from a settling head.
//! - A node pointed to by `head` (or by a published `Locked` node's `before`/`after`) is freed
//!   only through the epoch collector, after it was unlinked, so a pinned reader can always
//!   dereference what it loaded.
//! - Per key, `modify_index` strictly increases: every writer takes its index *after* its
//!   Acquire load of the head it replaces, and that head's index was taken before the head was
//!   published, so the counter's single modification order puts the new index above it.

use crate::sync::epoch::{self, Atomic, Guard, Owned, Shared};
use crate::sync::{Arc, AtomicU8, Ordering, StdArc};

/// Tag of a null `head`: a cell whose key was deleted through it. Terminal.
pub(crate) const RETIRED: usize = 1;

/// Tag of a head (a version, or `RETIRED`) whose journal record has not been taken yet.
/// Readers ignore it; writers wait until it is cleared. Never set on an unjournaled store.
pub(crate) const UNLOGGED: usize = 2;

/// One key's state. See the module docs for the layout and its transitions.
pub(crate) struct Cell<V> {
    pub(crate) head: Atomic<Node<V>>,
}

/// What a non-null `head` points to.
pub(crate) enum Node<V> {
    Version(Version<V>),
    Locked(Lock<V>),
}

/// An immutable committed version of a key.
pub(crate) struct Version<V> {
    pub(crate) value: StdArc<V>,
    pub(crate) flags: u64,
    pub(crate) modify_index: u64,
    pub(crate) create_index: u64,
}

/// A batch's hold on one cell.
///
/// `before` is the head the batch replaced (a version, or null for vacant) and never changes.
/// `after` is written by the lock holder before it flips [`Txn::state`] to committed, and is
/// read only by threads that saw the committed state.
pub(crate) struct Lock<V> {
    pub(crate) txn: Arc<Txn>,
    pub(crate) before: Atomic<Node<V>>,
    pub(crate) after: Atomic<Node<V>>,
}

/// The one commit point of a batch: every `Locked` node of the batch points here.
///
/// # Invariant
/// `state` goes from [`Txn::PENDING`] to [`Txn::COMMITTED`] at most once and never back; a
/// batch that aborts never leaves `PENDING`.
pub(crate) struct Txn {
    state: AtomicU8,
}

impl Txn {
    pub(crate) const PENDING: u8 = 0;
    pub(crate) const COMMITTED: u8 = 1;

    pub(crate) fn new() -> Self {
        Txn {
            state: AtomicU8::new(Self::PENDING),
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

/// A head as a caller must treat it.
pub(crate) enum Head<'g, V> {
    /// The key is absent and the cell is live: a write may CAS from `raw`.
    Vacant,
    /// A committed version.
    Present(&'g Version<V>),
    /// Held by a batch in flight; `visible` is what a reader sees now.
    Locked(Option<&'g Version<V>>),
    /// Written but not yet journaled (a journaled store only): readers see `visible`, writers
    /// wait for the writer that installed it to settle it.
    Unlogged(Option<&'g Version<V>>),
    /// Terminal: unlink the cell and use a fresh one.
    Retired,
}

impl<V> Cell<V> {
    pub(crate) fn vacant() -> Self {
        Cell {
            head: Atomic::null(),
        }
    }

    /// Loads the head and classifies it.
    pub(crate) fn load<'g>(&self, guard: &'g Guard) -> (Shared<'g, Node<V>>, Head<'g, V>) {
        // Acquire: pairs with the Release half of every CAS or store that published a head, so
        // the node's fields (and the index counter's progress, see the module invariants) are
        // visible before we look at them.
        let raw = self.head.load(Ordering::Acquire, guard);
        (raw, classify(raw, guard))
    }

    /// What a reader sees: the current version, if any. Never waits, never writes.
    pub(crate) fn read<'g>(&self, guard: &'g Guard) -> Option<&'g Version<V>> {
        match self.load(guard).1 {
            Head::Present(v) => Some(v),
            Head::Locked(visible) | Head::Unlogged(visible) => visible,
            Head::Vacant | Head::Retired => None,
        }
    }

    /// CAS the head from `current` to `new`. On failure hands `new` back.
    pub(crate) fn swap_from<'g>(
        &self,
        current: Shared<'g, Node<V>>,
        new: Owned<Node<V>>,
        guard: &'g Guard,
    ) -> Result<Shared<'g, Node<V>>, Owned<Node<V>>> {
        // AcqRel: Release publishes the new node's fields to the Acquire in `load`; Acquire
        // orders this CAS after the head it replaces, like the load that found it.
        match self
            .head
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire, guard)
        {
            Ok(installed) => Ok(installed),
            Err(e) => Err(e.new),
        }
    }

    /// CAS the head from `current` to `RETIRED` (plus `extra_tag`, [`UNLOGGED`] on a
    /// journaled store). Returns whether this call retired the cell.
    pub(crate) fn retire_from<'g>(
        &self,
        current: Shared<'g, Node<V>>,
        extra_tag: usize,
        guard: &'g Guard,
    ) -> bool {
        let retired = Shared::null().with_tag(RETIRED | extra_tag);
        // AcqRel: as in `swap_from`; a reader that sees RETIRED must not see the key again
        // through this cell, and the Release orders our earlier index take before it.
        self.head
            .compare_exchange(current, retired, Ordering::AcqRel, Ordering::Acquire, guard)
            .is_ok()
    }

    /// Clears the [`UNLOGGED`] tag of the head this thread installed as `installed`, once the
    /// journal has the record. Only the installer calls this (module invariants), so a plain
    /// store suffices.
    pub(crate) fn settle(&self, installed: Shared<'_, Node<V>>) {
        debug_assert!(installed.tag() & UNLOGGED != 0, "settling a settled head");
        // Release: pairs with the Acquire in `load`, so a writer that sees the settled head
        // also sees everything the journal did while the key was settling.
        self.head.store(
            installed.with_tag(installed.tag() & !UNLOGGED),
            Ordering::Release,
        );
    }
}

fn classify<'g, V>(raw: Shared<'g, Node<V>>, guard: &'g Guard) -> Head<'g, V> {
    let unlogged = raw.tag() & UNLOGGED != 0;
    // SAFETY: `raw` was loaded from a head under `guard`; nodes are freed only through the
    // epoch collector after being unlinked (module invariants), so it is valid for 'g.
    match unsafe { raw.as_ref() } {
        None if unlogged => Head::Unlogged(None),
        None if raw.tag() & RETIRED != 0 => Head::Retired,
        None => Head::Vacant,
        Some(Node::Version(v)) if unlogged => Head::Unlogged(Some(v)),
        Some(Node::Version(v)) => Head::Present(v),
        Some(Node::Locked(lock)) => Head::Locked(lock.visible(guard)),
    }
}

impl<V> Lock<V> {
    /// The version a reader sees through this lock: `after` once the batch committed, `before`
    /// until then.
    pub(crate) fn visible<'g>(&self, guard: &'g Guard) -> Option<&'g Version<V>> {
        let side = if self.txn.is_committed() {
            // Relaxed: ordered by the Acquire in `is_committed` (the holder stored `after`
            // before its Release of COMMITTED).
            self.after.load(Ordering::Relaxed, guard)
        } else {
            // Relaxed: `before` was written before this lock node was published, and we reached
            // the node through an Acquire load of the head.
            self.before.load(Ordering::Relaxed, guard)
        };
        // SAFETY: `before` stays allocated until the holder replaces the lock and retires it
        // through the collector; `after` is allocated before COMMITTED is published and becomes
        // the head (or is retired) only through the collector. We are pinned by `guard`.
        match unsafe { side.as_ref() } {
            Some(Node::Version(v)) => Some(v),
            // A lock's sides are only ever versions or null.
            Some(Node::Locked(_)) | None => None,
        }
    }
}

impl<V> Drop for Cell<V> {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no thread can reach this cell any more (the index dropped
        // it after its last guard ended), so nobody else can load the head.
        unsafe {
            let guard = epoch::unprotected();
            let head = self.head.load(Ordering::Relaxed, guard);
            if !head.is_null() {
                // A dropped cell holds a version (the store itself is being dropped) or nothing;
                // a lock is released before the batch that took it returns or unwinds.
                drop(head.into_owned());
            }
        }
    }
}

/// Settles a head this thread installed tagged [`UNLOGGED`] when dropped: after the journal
/// took the record, or while unwinding from a journal that panicked, so the key never stays
/// settling (and its writers never wait) forever.
pub(crate) struct Settling<'c, 'g, V> {
    cell: &'c Cell<V>,
    installed: Shared<'g, Node<V>>,
}

impl<'c, 'g, V> Settling<'c, 'g, V> {
    pub(crate) fn new(cell: &'c Cell<V>, installed: Shared<'g, Node<V>>) -> Self {
        Settling { cell, installed }
    }
}

impl<V> Drop for Settling<'_, '_, V> {
    fn drop(&mut self) {
        self.cell.settle(self.installed);
    }
}

impl<V> Version<V> {
    pub(crate) fn node(
        value: StdArc<V>,
        flags: u64,
        modify_index: u64,
        create_index: u64,
    ) -> Owned<Node<V>> {
        Owned::new(Node::Version(Version {
            value,
            flags,
            modify_index,
            create_index,
        }))
    }
}

/// Sets the indices (and flags) of a version node that has not been published yet.
pub(crate) fn restamp<V>(
    node: &mut Owned<Node<V>>,
    flags: u64,
    modify_index: u64,
    create_index: u64,
) {
    if let Node::Version(v) = &mut **node {
        v.flags = flags;
        v.modify_index = modify_index;
        v.create_index = create_index;
    }
}
