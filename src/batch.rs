//! All-or-nothing batches: ordered per-key locking, validate every condition, then apply at one
//! index behind one commit point.
//!
//! # Protocol
//! 1. **Check the request** before touching anything: not empty, not over the bound, no key
//!    twice, no `delete_cas` with 0. Sort the operations by key: the one global lock order.
//! 2. **Lock** each key in that order: CAS its slot's word from a version, a tomb or empty to a
//!    [`Lock`] naming this batch's [`Txn`], the `before` it replaced and the key (by pointer:
//!    the key of `before`, or of the spare tomb of a slot claimed empty). The `Txn` and every
//!    lock of the batch share one block: one allocation and one retire per batch. A cell already
//!    locked by another batch is waited for; since every batch locks in key order, waits cannot
//!    form a cycle. Single-key writers never hold a lock while waiting, so they cannot close one
//!    either.
//! 3. **Validate** every condition against the `before`s. Any failure: restore every `before`
//!    and report every failing key. The batch never touched the commit point, so no reader saw
//!    anything of it.
//! 4. **Commit**: take one index, store each key's `after`, then flip the `Txn` to committed
//!    with one Release store. That store is the batch's linearization point: a reader that meets
//!    a `Locked` node reads `after` if and only if it sees the flip, so once any reader has seen
//!    one key new, every later read of any key of the batch sees it new too.
//! 5. **Release**: store each slot's `after` over its lock (a tomb where a key that had no
//!    slot stays absent: a claimed slot never becomes empty again), retire the replaced
//!    versions through the epoch collector, then the `Txn` block with its locks.
//!
//! Readers never wait for a batch: they resolve a `Locked` word through the `Txn`. Writers of a
//! locked key wait until the release. A batch that meets a table resize while locking releases
//! everything it holds (nothing was committed, so no reader saw it), helps the resize, and
//! starts locking again: the copier waits for locked slots, so holding on would deadlock. If
//! user code (`PartialEq`, `Hash`, `Ord`) panics while a batch holds locks, the unwinding
//! releases them (see [`Held`]'s `Drop`).

use std::hash::Hash;

use smallvec::SmallVec;

use crate::cache::{self, Removed};
use crate::cell::{
    self, classify, visible, Cas, Cell, Life, Lock, Meta, Record, State, Tomb, Txn, Unpublished,
    EMPTY,
};
use crate::engine::{check_index, value_matches};
use crate::entry::{Entry, EntryRef};
use crate::error::{Conflict, Error, Expected};
use crate::journal::{Mutation, Written};
use crate::store::Store;
use crate::sync::epoch::Guard;
use crate::sync::{epoch, Backoff, Ordering};
use crate::table::{Claim, Located, Table};

/// One operation of a batch.
///
/// # Example
/// ```
/// use caskv::{Op, Store};
/// let store: Store<&str, &str> = Store::new();
/// let a = store.set("a", "1");
/// let index = store
///     .batch(vec![Op::set_cas("a", "2", a), Op::set_cas("b", "1", 0), Op::check_index("c", 0)])
///     .unwrap();
/// assert_eq!(store.get("a").unwrap().modify_index, index);
/// assert_eq!(store.get("b").unwrap().modify_index, index);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Op<K, V> {
    /// Set unconditionally; `flags: None` keeps existing flags (0 for a new key).
    Set {
        /// The key.
        key: K,
        /// The new value.
        value: V,
        /// The new flags, or keep.
        flags: Option<u64>,
    },
    /// Set if the key's `modify_index` is `expected` (0: only if absent).
    SetCas {
        /// The key.
        key: K,
        /// The new value.
        value: V,
        /// The expected index; 0 means absent.
        expected: u64,
        /// The new flags, or keep.
        flags: Option<u64>,
    },
    /// Delete; the key must be present.
    Delete {
        /// The key.
        key: K,
    },
    /// Delete if the key's `modify_index` is `expected` (≥ 1).
    DeleteCas {
        /// The key.
        key: K,
        /// The expected index.
        expected: u64,
    },
    /// Assert the key's `modify_index` is `expected` (0: absent); writes nothing.
    CheckIndex {
        /// The key.
        key: K,
        /// The expected index; 0 means absent.
        expected: u64,
    },
    /// Value compare-and-set: if the value equals `expected` (`None`: absent), write `new`
    /// (`None`: delete).
    CompareAndSet {
        /// The key.
        key: K,
        /// The expected value, or absent.
        expected: Option<V>,
        /// The value to write, or absent to delete.
        new: Option<V>,
    },
}

impl<K, V> Op<K, V> {
    /// [`Op::Set`] keeping flags.
    pub fn set(key: K, value: V) -> Self {
        Op::Set {
            key,
            value,
            flags: None,
        }
    }

    /// [`Op::SetCas`] keeping flags.
    pub fn set_cas(key: K, value: V, expected: u64) -> Self {
        Op::SetCas {
            key,
            value,
            expected,
            flags: None,
        }
    }

    /// [`Op::Delete`].
    pub fn delete(key: K) -> Self {
        Op::Delete { key }
    }

    /// [`Op::DeleteCas`].
    pub fn delete_cas(key: K, expected: u64) -> Self {
        Op::DeleteCas { key, expected }
    }

    /// [`Op::CheckIndex`].
    pub fn check_index(key: K, expected: u64) -> Self {
        Op::CheckIndex { key, expected }
    }

    /// [`Op::CompareAndSet`].
    pub fn compare_and_set(key: K, expected: Option<V>, new: Option<V>) -> Self {
        Op::CompareAndSet { key, expected, new }
    }

    /// Sets the flags of a `Set` or `SetCas` (other operations are returned unchanged).
    pub fn with_flags(mut self, new_flags: u64) -> Self {
        if let Op::Set { flags, .. } | Op::SetCas { flags, .. } = &mut self {
            *flags = Some(new_flags);
        }
        self
    }

    /// The key this operation is on.
    pub fn key(&self) -> &K {
        match self {
            Op::Set { key, .. }
            | Op::SetCas { key, .. }
            | Op::Delete { key }
            | Op::DeleteCas { key, .. }
            | Op::CheckIndex { key, .. }
            | Op::CompareAndSet { key, .. } => key,
        }
    }
}

/// What an operation does to its key once every condition held.
#[derive(Clone, Copy)]
enum Effect {
    /// Write the operation's value with these flags (`None`: keep).
    Write(Option<u64>),
    Remove,
    Keep,
}

impl<K: Clone, V: PartialEq + Clone> Op<K, V> {
    /// Checks this operation's condition against the key's version before the batch.
    fn check(&self, before: Option<&Record<K, V>>) -> Result<Effect, Conflict<K, V>> {
        let conflict = |expected| Conflict {
            key: self.key().clone(),
            expected,
            current: before.map(Entry::of),
        };
        let index_ok = |expected: u64| check_index(self.key(), expected, before).is_ok();
        match self {
            Op::Set { flags, .. } => Ok(Effect::Write(*flags)),
            Op::SetCas {
                expected, flags, ..
            } => match index_ok(*expected) {
                true => Ok(Effect::Write(*flags)),
                false => Err(conflict(Expected::Index(*expected))),
            },
            Op::Delete { .. } => match before {
                Some(_) => Ok(Effect::Remove),
                None => Err(conflict(Expected::Present)),
            },
            Op::DeleteCas { expected, .. } => match index_ok(*expected) {
                true => Ok(Effect::Remove),
                false => Err(conflict(Expected::Index(*expected))),
            },
            Op::CheckIndex { expected, .. } => match index_ok(*expected) {
                true => Ok(Effect::Keep),
                false => Err(conflict(Expected::Index(*expected))),
            },
            Op::CompareAndSet { expected, new, .. } => {
                if !value_matches(expected.as_ref(), before) {
                    let kind = if expected.is_some() {
                        Expected::Value
                    } else {
                        Expected::Absent
                    };
                    return Err(conflict(kind));
                }
                Ok(match new {
                    Some(_) => Effect::Write(None),
                    None if before.is_some() => Effect::Remove,
                    None => Effect::Keep,
                })
            }
        }
    }

    /// The key, and the value an operation whose effect is a write carries.
    fn into_parts(self) -> (K, Option<V>) {
        match self {
            Op::Set { key, value, .. } | Op::SetCas { key, value, .. } => (key, Some(value)),
            Op::CompareAndSet { key, new, .. } => (key, new),
            Op::Delete { key } | Op::DeleteCas { key, .. } | Op::CheckIndex { key, .. } => {
                (key, None)
            }
        }
    }
}

/// One slot this batch holds.
struct HeldSlot<'g> {
    slot: &'g Cell,
    /// What the lock replaced (a record, a tomb, or empty).
    before: u64,
    /// For a slot claimed empty: the tomb it gets if the key stays absent, made before the
    /// claim so that releasing runs no user code and allocates nothing (a claimed slot never
    /// becomes empty again), and whose key the lock names meanwhile. Retired at release if
    /// unused (a reader may still be reading its key through the lock).
    spare: u64,
    /// Set once released, so that unwinding does not release twice.
    released: bool,
}

/// Why a batch stopped locking.
enum Stop<'g> {
    /// The table is being resized: let go of everything, help, start locking again.
    Resizing(&'g Table),
    /// The key's slot is already held by this batch: two keys that are equal (`Eq`) were not
    /// next to each other after sorting (`Ord` disagrees with `Eq`).
    Duplicate,
}

/// The held slots of a batch: inline up to this many keys (no allocation for a small batch).
const INLINE_KEYS: usize = 8;

/// The slots a batch holds, in key order; slot `i` is held by lock `i` of the batch's [`Txn`]
/// block. Dropping it releases every slot not yet released: to `after` once the batch
/// committed, to `before` otherwise, and then retires the batch's [`Txn`] with its locks. That makes a panic in user code between lock and release leave every key as it was
/// (or as committed), never locked.
struct Held<'s, 'g, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    store: &'s Store<K, V>,
    guard: &'g Guard,
    /// Ours from `new`, with room for a lock per key; retired by `drop` (or `restart`), after
    /// every lock in it left its slot.
    txn: *mut Txn,
    /// The batch's keys: the room for locks of every block it makes.
    keys: usize,
    slots: SmallVec<[HeldSlot<'g>; INLINE_KEYS]>,
    /// Expiries made by the lock step, told to the listener when this is dropped: after
    /// `drop` released every slot (a field drops after its struct's `drop`).
    removed: Removed<'s, K, V>,
}

impl<'s, 'g, K, V> Held<'s, 'g, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    // Inlined so that the held slots (a few hundred bytes inline) are built where they stay,
    // not built here and copied into the caller's frame.
    #[inline(always)]
    fn new(store: &'s Store<K, V>, guard: &'g Guard, keys: usize) -> Self {
        Held {
            store,
            guard,
            txn: Txn::with_locks(keys),
            keys,
            // Not `with_capacity`: a small batch's slots stay inline (a vector built and
            // returned by value would be copied into `Held`, a few hundred bytes).
            slots: SmallVec::new(),
            removed: store.engine.removed(),
        }
    }

    /// The batch's status word.
    fn txn(&self) -> &Txn {
        // SAFETY: made in `new` (or `restart`) and retired only by `release_all`, which `drop`
        // and `restart` run after every lock of the block left its slot.
        unsafe { &*self.txn }
    }

    /// Locks the slot of `key` with the next lock of the block, waiting while another batch
    /// holds it or a write to it settles. Gives up (holding what it held) when the table is
    /// being resized.
    fn lock(&mut self, key: &K) -> Result<(), Stop<'g>> {
        let raw = &self.store.engine.raw;
        let guard = self.guard;
        let hash = raw.hash(key);
        let mut backoff = Backoff::new();
        // SAFETY: the block has room for a lock per key, and we hold fewer slots than keys.
        let lock = unsafe { Txn::lock::<K>(self.txn, self.slots.len()) };
        let lock_word = cell::word_of(lock, cell::hash_tag(hash), cell::LOCKED);
        let mut spare = Unpublished::<K, V>::new(EMPTY);
        loop {
            let table = raw.table(guard);
            let (slot, before) = match raw.locate(table, hash, key) {
                Located::Resizing => return Err(Stop::Resizing(table)),
                Located::Vacant { slot } => {
                    if spare.word == EMPTY {
                        spare.word = Tomb::word(cell::hash_tag(hash), key.clone(), 0, 0);
                    }
                    // SAFETY: our unpublished lock; the spare tomb starts with its `Keyed`.
                    unsafe { set_lock(lock, cell::node_of(spare.word), EMPTY) };
                    match raw.claim(table, slot, lock_word) {
                        Claim::Claimed => (slot, EMPTY),
                        Claim::Lost => continue,
                        Claim::Resizing => return Err(Stop::Resizing(table)),
                    }
                }
                // SAFETY: `word` was loaded from a slot under `guard`.
                Located::Found { slot, word } => match unsafe { classify::<K, V>(word, guard) } {
                    State::Locked | State::Unlogged => {
                        if word & cell::LOCKED != 0 {
                            // SAFETY: a LOCKED word loaded under `guard` points to a live lock.
                            let held = unsafe { &*cell::node_of::<Lock<K>>(word) };
                            if std::ptr::eq(held.txn, self.txn) {
                                return Err(Stop::Duplicate);
                            }
                        }
                        if table.resizing() {
                            return Err(Stop::Resizing(table));
                        }
                        backoff.snooze();
                        continue;
                    }
                    State::Frozen(_) => return Err(Stop::Resizing(table)),
                    State::Present(r) if self.store.engine.live(r).is_none() => {
                        // Expired: its delete comes first, at its own index; then look again.
                        self.store
                            .engine
                            .expire(slot, word, r, guard, &mut self.removed);
                        continue;
                    }
                    State::Absent | State::Present(_) => {
                        // SAFETY: our unpublished lock; `word` (a record or a tomb, which start
                        // with their `Keyed`) stays live while the lock replaces it.
                        unsafe { set_lock(lock, cell::node_of(word), word) };
                        if slot.lock(word, lock_word) == Cas::Lost {
                            continue;
                        }
                        (slot, word)
                    }
                },
            };
            self.slots.push(HeldSlot {
                slot,
                before,
                spare: if before == EMPTY {
                    spare.publish()
                } else {
                    EMPTY
                },
                released: false,
            });
            return Ok(());
        }
    }

    /// Lock `i` of the batch, which holds slot `i`.
    fn lock_node(&self, i: usize) -> &'g Lock<K> {
        debug_assert!(i < self.slots.len());
        // SAFETY: lock `i` is in our block, published in slot `i`; the block is retired only
        // by `release_all`, through the collector that waits for our pin.
        unsafe { &*Txn::lock::<K>(self.txn, i) }
    }

    /// Replaces the lock of held slot `i` (which only we may change) with `next`; a slot left
    /// with nothing gets its spare tomb, since a claimed slot never becomes empty again. Runs
    /// no user code (it runs in `Drop`, perhaps while unwinding; a retire only queues the
    /// node, and the collector frees it at a later outermost pin) and allocates at most a
    /// slot of the thread's garbage queue.
    fn release_one(&mut self, i: usize, next: u64) {
        let guard = self.guard;
        let held = &mut self.slots[i];
        if held.released {
            return;
        }
        held.released = true;
        let spare = std::mem::replace(&mut held.spare, EMPTY);
        let (next, unused) = match next {
            EMPTY => {
                debug_assert!(spare != EMPTY, "an empty slot is claimed with a spare tomb");
                (spare, EMPTY)
            }
            next => (next, spare),
        };
        held.slot.release(next);
        // The lock itself is retired with the batch's block (`release_all`). An unused spare
        // tomb was never in a slot, but the lock named its key: pinned readers may be reading it.
        // SAFETY: reachable only through the lock just unlinked; retired once, here.
        unsafe { cell::retire::<K, V>(unused, guard) };
        if held.before != next {
            // SAFETY: `before` was the word we replaced with the lock; it is now unreachable
            // (neither in the slot nor in a live lock) and is retired once, here.
            unsafe { cell::retire::<K, V>(held.before, guard) };
        }
    }
}

impl<K, V> Held<'_, '_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Releases every slot (to `before`: the batch never committed) and starts over with a
    /// fresh `Txn`: a reader that loaded one of the released locks may still read the old one,
    /// which must stay pending for ever.
    fn restart(&mut self) {
        debug_assert!(
            !self.txn().is_committed(),
            "a committed batch never restarts"
        );
        self.release_all();
        self.slots.clear();
        self.txn = Txn::with_locks(self.keys);
    }

    /// Releases every slot not yet released (to `after` once committed, else to `before`),
    /// then retires the `Txn`.
    fn release_all(&mut self) {
        let committed = self.txn().is_committed();
        for i in 0..self.slots.len() {
            let next = if committed {
                // Relaxed: we stored `after` ourselves on this thread.
                self.lock_node(i).after.load(Ordering::Relaxed)
            } else {
                self.slots[i].before
            };
            self.release_one(i, next);
        }
        // SAFETY: every lock of the block is out of its slot (released above, or never
        // published), so only threads pinned before now can reach the block; retired once,
        // here.
        unsafe { epoch::retire(self.guard, Txn::word(self.txn), Txn::free) };
    }
}

impl<K, V> Drop for Held<'_, '_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Sets the key and the `before` of an unpublished lock.
///
/// # Safety
/// `lock` is a lock of a live block of ours, not in any slot; `keyed` stays live while the lock
/// is published.
unsafe fn set_lock<K>(lock: *mut Lock<K>, keyed: *const cell::Keyed<K>, before: u64) {
    // SAFETY: the caller's contract: nobody else can see the lock.
    unsafe {
        (*lock).keyed = keyed;
        (*lock).before = before;
    }
}

impl<K, V> Store<K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Applies every operation or none, all at one new `modify_index`, which it returns.
    ///
    /// Fails with [`Error::BatchConflict`] listing every failing operation (in key order), or
    /// with [`Error::EmptyBatch`], [`Error::BatchTooLarge`], [`Error::DuplicateKey`] or
    /// [`Error::CreateOnlyDelete`] before anything is locked. A failed batch changes nothing,
    /// and no reader ever sees a part of a batch: see the [module docs](crate#batch-semantics).
    ///
    /// A committed batch takes one index even when its operations write nothing (only checks).
    ///
    /// ```
    /// use caskv::{Op, Store};
    /// let store: Store<&str, &str> = Store::new();
    /// store.set("a", "1");
    /// let err = store.batch(vec![Op::set_cas("a", "2", 999), Op::delete("zzz")]).unwrap_err();
    /// assert_eq!(err.conflicts().len(), 2); // every failure, and nothing applied
    /// assert_eq!(store.get("a").unwrap().value, "1");
    /// ```
    pub fn batch(&self, ops: Vec<Op<K, V>>) -> Result<u64, Error<K, V>>
    where
        V: PartialEq,
    {
        Ok(self.write_batch(ops)?.index)
    }

    /// `batch` with the journal ticket.
    pub(crate) fn write_batch(&self, mut ops: Vec<Op<K, V>>) -> Result<Written, Error<K, V>>
    where
        V: PartialEq,
    {
        if ops.is_empty() {
            return Err(Error::EmptyBatch);
        }
        if ops.len() > self.engine.config.max_batch {
            return Err(Error::BatchTooLarge {
                len: ops.len(),
                max: self.engine.config.max_batch,
            });
        }
        ops.sort_by(|a, b| a.key().cmp(b.key()));
        if let Some(pair) = ops.windows(2).find(|w| w[0].key() == w[1].key()) {
            return Err(Error::DuplicateKey(pair[0].key().clone()));
        }
        if let Some(op) = ops
            .iter()
            .find(|op| matches!(op, Op::DeleteCas { expected: 0, .. }))
        {
            return Err(Error::CreateOnlyDelete(op.key().clone()));
        }

        let guard = self.engine.raw.pin();
        let mut held = Held::new(self, &guard, ops.len());
        self.lock_all(&mut held, ops.iter().map(Op::key))?;

        // Validate against the befores: every failure is collected. A deadline that passes from
        // here to the commit's flip, a few hundred nanoseconds, counts as after the batch.
        let mut effects: SmallVec<[_; INLINE_KEYS]> = SmallVec::new();
        let mut conflicts = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            // SAFETY: `before` is kept alive by our lock (only we may retire it) and our pin.
            let before = unsafe { visible::<K, V>(held.slots[i].before, &guard) };
            if before.is_some_and(|r| self.engine.live(r).is_none()) {
                // A version expired after its key was locked: let go of every key and lock
                // again (the lock path deletes an expired version first, at its own index), so
                // that an expiry is always a delete of its own, never folded into the batch.
                drop(held);
                held = Held::new(self, &guard, ops.len());
                self.lock_all(&mut held, ops.iter().map(Op::key))?;
                effects.clear();
                conflicts.clear();
                i = 0;
                continue;
            }
            match ops[i].check(before) {
                Ok(effect) => effects.push((effect, before.map(|r| r.header.meta))),
                Err(c) => conflicts.push(c),
            }
            i += 1;
        }
        if !conflicts.is_empty() {
            // `held` restores every before as it goes out of scope (dropped in place, not
            // moved into `drop`).
            return Err(Error::BatchConflict(conflicts));
        }

        // Commit: one index, every after stored, then the one flip.
        let deadline = self.engine.deadline(None);
        let index = self.engine.global_index.take();
        let mut writes = 0;
        // By reference: moving the inline vector into the iterator would copy all of it.
        for (i, (op, &(effect, before))) in ops.into_iter().zip(&effects).enumerate() {
            // Our lock's word, which only we change: it carries the key's hash tag.
            let tag = cell::tag_of(held.slots[i].slot.peek());
            let (key, value) = op.into_parts();
            let after = match (effect, value) {
                (Effect::Write(flags), Some(value)) => {
                    let meta = Meta {
                        modify_index: index,
                        create_index: before.map_or(index, |m| m.create_index),
                        flags: flags.unwrap_or_else(|| before.map_or(0, |m| m.flags)),
                    };
                    // An update carries the old version's frequency (one access more).
                    let hints = if self.engine.policy.is_some() {
                        // SAFETY: `before` is kept alive by our lock and our pin.
                        unsafe { visible::<K, V>(held.slots[i].before, &guard) }
                            .map_or(0, |r| cache::carried(r.life.hints()))
                    } else {
                        0
                    };
                    writes += 1;
                    Record::word(tag, key, value, meta, Life::new(deadline, hints), 0)
                }
                (Effect::Remove, _) => {
                    writes += 1;
                    Tomb::word(tag, key, index, 0)
                }
                (Effect::Keep, _) | (Effect::Write(_), None) => held.slots[i].before,
            };
            // Relaxed: published by the Release in `Txn::commit` below.
            held.lock_node(i).after.store(after, Ordering::Relaxed);
        }
        held.txn().commit();
        // Journal while every key is still held: its next writer waits for the release.
        let mut ticket = None;
        if self.engine.journal.is_some() || self.engine.feed.is_some() {
            let mut changed: Vec<(&K, Option<EntryRef<'_, V>>)> = Vec::with_capacity(writes);
            for (i, held_slot) in held.slots.iter().enumerate() {
                // Relaxed: we stored `after` ourselves on this thread.
                let after = held.lock_node(i).after.load(Ordering::Relaxed);
                if after == held_slot.before {
                    continue; // only checked: nothing written
                }
                // SAFETY: `after` is ours (see the commit loop), live while we hold the lock.
                let keyed = unsafe { &*cell::node_of::<cell::Keyed<K>>(after) };
                // SAFETY: as above; a record or a tomb.
                let entry = unsafe { visible::<K, V>(after, &guard) }.map(EntryRef::of);
                changed.push((&keyed.key, entry));
            }
            ticket = self.engine.journal.as_ref().map(|journal| {
                journal.record(Mutation::Batch {
                    index,
                    writes: &changed,
                })
            });
            self.engine.changed(index, || Mutation::Batch {
                index,
                writes: &changed,
            });
        } else {
            self.engine.global_index.skip(index);
        }
        // One check for the whole batch (its writes are all visible since the flip).
        if self.engine.waiters.anyone() {
            for i in 0..held.slots.len() {
                // Relaxed: we stored `after` ourselves on this thread.
                let after = held.lock_node(i).after.load(Ordering::Relaxed);
                if after != held.slots[i].before {
                    // SAFETY: `after` is ours (see the commit loop), live while we hold the lock.
                    let key = unsafe { &(*cell::node_of::<cell::Keyed<K>>(after)).key };
                    let hash = self.engine.raw.hash(key);
                    self.engine.waiters.wake_registered(hash, key);
                }
            }
        }
        if let Some(policy) = &self.engine.policy {
            let changes: SmallVec<[(u64, u64); INLINE_KEYS]> = (0..held.slots.len())
                // Relaxed: we stored `after` ourselves on this thread.
                .map(|i| {
                    (
                        held.slots[i].before,
                        held.lock_node(i).after.load(Ordering::Relaxed),
                    )
                })
                .collect();
            // Released first: evictions must not meet this batch's own locks.
            drop(held);
            for (before, after) in changes {
                if before == after {
                    continue;
                }
                // SAFETY: both were in our slots under `guard`; whatever replaced them since
                // retired them through the collector, which waits for our pin.
                let (old, new) = unsafe {
                    (
                        visible::<K, V>(before, &guard),
                        visible::<K, V>(after, &guard),
                    )
                };
                match (old, new) {
                    (Some(old), Some(new)) => policy.reweigh(&self.engine, after, old, new, &guard),
                    (Some(old), None) => policy.forget(before, old),
                    (None, Some(new)) => {
                        let hash = self.engine.raw.hash(&new.header.keyed.key);
                        policy.admit(&self.engine, hash, new, &guard);
                    }
                    (None, None) => {}
                }
            }
        }
        // Otherwise `held` releases every slot to its after as it goes out of scope.
        Ok(Written { index, ticket })
    }

    /// Locks the slots of `keys` (sorted, distinct) in order into `held` (which holds nothing
    /// yet). A resize met on the way makes it release everything, help the resize, and start
    /// again. Fails with [`Error::DuplicateKey`] when a key's slot is already held by this batch
    /// (keys whose `Ord` and `Eq` disagree escaped the duplicate check), rather than waiting
    /// for itself.
    fn lock_all<'k>(
        &self,
        held: &mut Held<'_, '_, K, V>,
        keys: impl Iterator<Item = &'k K> + Clone,
    ) -> Result<(), Error<K, V>>
    where
        K: 'k,
    {
        'restart: loop {
            for key in keys.clone() {
                match held.lock(key) {
                    Ok(()) => {}
                    Err(Stop::Resizing(table)) => {
                        held.restart(); // never committed: every slot goes back to its before
                        self.engine
                            .raw
                            .help_resize(table, keys.clone().count(), held.guard);
                        continue 'restart;
                    }
                    Err(Stop::Duplicate) => return Err(Error::DuplicateKey(key.clone())),
                }
            }
            return Ok(());
        }
    }

    /// Reads several keys as one atomic snapshot: the entries all held at one instant, so the
    /// result never shows part of a batch. Results are in the order of `keys` (a key listed
    /// twice is read twice, within the same snapshot).
    ///
    /// It reads every key's slot twice under one pin and returns when nothing changed in
    /// between (no write, no batch holding a key, the table not replaced): then every value
    /// was current at once, between the two passes. It writes nothing and takes no index
    /// (except that the fallback below, like any writer, first deletes a version it finds
    /// expired, at that delete's own index). Under
    /// writes that keep changing the keys it falls back, after a few tries, to locking the keys
    /// in key order like a batch and releasing them unchanged. Fails only with
    /// [`Error::BatchTooLarge`] (or [`Error::DuplicateKey`] for keys whose `Ord` and `Eq`
    /// disagree, on the fallback).
    ///
    /// ```
    /// use caskv::Store;
    /// let store: Store<&str, u8> = Store::new();
    /// store.set("a", 1);
    /// let got = store.get_many(&["b", "a"]).unwrap();
    /// assert!(got[0].is_none());
    /// assert_eq!(got[1].as_ref().unwrap().value, 1);
    /// ```
    pub fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>, Error<K, V>> {
        /// Double collects tried before locking.
        const ATTEMPTS: usize = 16;
        if keys.len() > self.engine.config.max_batch {
            return Err(Error::BatchTooLarge {
                len: keys.len(),
                max: self.engine.config.max_batch,
            });
        }
        let guard = self.engine.raw.pin();
        let hashes: Vec<u64> = keys.iter().map(|k| self.engine.raw.hash(k)).collect();
        let collect = |table| -> Vec<u64> {
            keys.iter()
                .zip(&hashes)
                .map(|(k, &h)| self.engine.raw.find(table, h, k).unwrap_or(EMPTY))
                .collect()
        };
        let mut backoff = Backoff::new();
        for _ in 0..ATTEMPTS {
            let table = self.engine.raw.table(&guard);
            let first = collect(table);
            // A batch in flight may commit between the passes without changing the word: wait.
            if first.iter().any(|w| w & cell::LOCKED != 0) {
                backoff.snooze();
                continue;
            }
            // While we are pinned no node address is reused, so an unchanged word means an
            // unchanged value (a lock taken and released unchanged in between left the value
            // as it was); an unchanged current table means a frozen word was still current.
            if collect(table) == first && std::ptr::eq(self.engine.raw.table(&guard), table) {
                return Ok(first
                    .iter()
                    // SAFETY: each word was loaded from a slot under `guard`.
                    .map(|&w| unsafe { self.engine.resolve(w, &guard) }.map(Entry::of))
                    .collect());
            }
        }
        let mut sorted: Vec<&K> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut held = Held::new(self, &guard, sorted.len());
        self.lock_all(&mut held, sorted.iter().copied())?;
        let read: Vec<Option<Entry<V>>> = held
            .slots
            .iter()
            .map(|held_slot| {
                // SAFETY: `before` is kept alive by our lock and our pin.
                unsafe { self.engine.resolve(held_slot.before, &guard) }.map(Entry::of)
            })
            .collect();
        drop(held); // never committed: every slot goes back to its before
        Ok(keys
            .iter()
            .map(|k| match sorted.binary_search(&k) {
                Ok(i) => read[i].clone(),
                Err(_) => None,
            })
            .collect())
    }
}
