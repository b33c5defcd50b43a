//! All-or-nothing batches: ordered per-key locking, validate every condition, then apply at one
//! index behind one commit point.
//!
//! # Protocol
//! 1. **Check the request** before touching anything: not empty, not over the bound, no key
//!    twice, no `delete_cas` with 0. Sort the operations by key: the one global lock order.
//! 2. **Lock** each key in that order: CAS its cell's head from a version (or vacant) to a
//!    `Locked` node naming this batch's [`Txn`] and the `before` it replaced. A cell already
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
//! 5. **Release**: replace each `Locked` head with its `after` (or `RETIRED` for a deleted key,
//!    then unlink the cell), and retire the lock nodes and the replaced versions through the
//!    epoch collector.
//!
//! Readers never wait for a batch: they resolve a `Locked` node through the `Txn`. Writers of a
//! locked key wait until the release. If user code (`PartialEq`, `Hash`, `Ord`) panics while a
//! batch holds locks, the unwinding releases them (see [`Held`]'s `Drop`).

use std::hash::Hash;

use crate::cell::{Head, Lock, Node, Txn, Version, RETIRED};
use crate::entry::{Entry, EntryRef};
use crate::error::{Conflict, Error, Expected};
use crate::index::{CellRef, Pin};
use crate::journal::{Mutation, Written};
use crate::store::{check_index, flags_or_kept, value_matches, Store};
use crate::sync::epoch::{Atomic, Owned, Shared};
use crate::sync::{Arc, Backoff, Ordering, StdArc};

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
        value: StdArc<V>,
        /// The new flags, or keep.
        flags: Option<u64>,
    },
    /// Set if the key's `modify_index` is `expected` (0: only if absent).
    SetCas {
        /// The key.
        key: K,
        /// The new value.
        value: StdArc<V>,
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
        new: Option<StdArc<V>>,
    },
}

impl<K, V> Op<K, V> {
    /// [`Op::Set`] keeping flags.
    pub fn set(key: K, value: impl Into<StdArc<V>>) -> Self {
        Op::Set {
            key,
            value: value.into(),
            flags: None,
        }
    }

    /// [`Op::SetCas`] keeping flags.
    pub fn set_cas(key: K, value: impl Into<StdArc<V>>, expected: u64) -> Self {
        Op::SetCas {
            key,
            value: value.into(),
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
        Op::CompareAndSet {
            key,
            expected,
            new: new.map(StdArc::new),
        }
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
enum Effect<V> {
    Write(StdArc<V>, Option<u64>),
    Remove,
    Keep,
}

impl<K: Clone, V: PartialEq> Op<K, V> {
    /// Checks this operation's condition against the key's version before the batch.
    fn check(&self, before: Option<&Version<V>>) -> Result<Effect<V>, Conflict<K, V>> {
        let conflict = |expected| Conflict {
            key: self.key().clone(),
            expected,
            current: before.map(Entry::of),
        };
        let index_ok = |expected: u64| check_index(self.key(), expected, before).is_ok();
        match self {
            Op::Set { value, flags, .. } => Ok(Effect::Write(value.clone(), *flags)),
            Op::SetCas {
                value,
                expected,
                flags,
                ..
            } => match index_ok(*expected) {
                true => Ok(Effect::Write(value.clone(), *flags)),
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
                    Some(v) => Effect::Write(v.clone(), None),
                    None if before.is_some() => Effect::Remove,
                    None => Effect::Keep,
                })
            }
        }
    }
}

/// One cell this batch holds.
struct HeldCell<'g, V> {
    cell: CellRef<'g, V>,
    /// The `Locked` node installed in the cell.
    lock: Shared<'g, Node<V>>,
    /// What the lock replaced (a version, or null for vacant).
    before: Shared<'g, Node<V>>,
    /// Set once released, so that unwinding does not release twice.
    released: bool,
}

/// The cells a batch holds, in key order. Dropping it releases every cell not yet released:
/// to `after` once the batch committed, to `before` otherwise. That makes a panic in user
/// code between lock and release leave every key as it was (or as committed), never locked.
struct Held<'s, 'g, K, V>
where
    K: Hash + Eq + Ord + Clone,
    V: Send + 'static,
{
    store: &'s Store<K, V>,
    pin: &'g Pin<'s>,
    txn: Arc<Txn>,
    /// The key of each held cell, by position.
    keys: Vec<&'g K>,
    cells: Vec<HeldCell<'g, V>>,
}

impl<'s, 'g, K, V> Held<'s, 'g, K, V>
where
    K: Hash + Eq + Ord + Clone,
    V: Send + 'static,
{
    /// Locks the cell of `key`, waiting while another batch holds it.
    fn lock(&mut self, key: &K) {
        let guard = &self.pin.epoch;
        let mut backoff = Backoff::new();
        let mut node: Option<Owned<Node<V>>> = None;
        loop {
            let cell = match self.store.index.get(key, self.pin) {
                Some(cell) => cell,
                None => self.store.index.get_or_insert_vacant(key.clone(), self.pin),
            };
            let (raw, head) = cell.load(guard);
            match head {
                Head::Retired => {
                    self.store.index.unlink(key, &cell, self.pin);
                    continue;
                }
                Head::Locked(_) | Head::Unlogged(_) => {
                    backoff.snooze();
                    continue;
                }
                Head::Vacant | Head::Present(_) => {}
            }
            let mut lock = node.take().unwrap_or_else(|| {
                Owned::new(Node::Locked(Lock {
                    txn: self.txn.clone(),
                    before: Atomic::null(),
                    after: Atomic::null(),
                }))
            });
            if let Node::Locked(l) = &mut *lock {
                // Relaxed: the node is not published yet; the CAS below releases it.
                l.before.store(raw, Ordering::Relaxed);
            }
            match cell.swap_from(raw, lock, guard) {
                Ok(installed) => {
                    self.cells.push(HeldCell {
                        cell,
                        lock: installed,
                        before: raw,
                        released: false,
                    });
                    return;
                }
                Err(back) => node = Some(back),
            }
        }
    }

    /// Replaces the head of held cell `i` (which only we may change) with `next`, or retires
    /// the cell when `next` is null.
    fn release_one(&mut self, i: usize, next: Shared<'g, Node<V>>) {
        let guard = &self.pin.epoch;
        let held = &mut self.cells[i];
        if held.released {
            return;
        }
        held.released = true;
        let next = if next.is_null() {
            Shared::null().with_tag(RETIRED)
        } else {
            next
        };
        // Release: pairs with the Acquire in `Cell::load`, publishing `next` (and, for readers
        // that then see no lock, everything the batch did before).
        held.cell.head.store(next, Ordering::Release);
        // SAFETY: the lock node is unlinked by the store above and was reachable only through
        // this head; pinned readers that loaded it are waited for by the collector.
        unsafe { guard.defer_destroy(held.lock) };
        if !held.before.is_null() && held.before != next {
            // SAFETY: `before` was the head we replaced with the lock; it is now unlinked
            // (neither head nor reachable from a live lock) and is freed after every reader
            // pinned before now is gone.
            unsafe { guard.defer_destroy(held.before) };
        }
        if next.tag() == RETIRED {
            self.store.index.unlink(self.keys[i], &held.cell, self.pin);
        }
    }
}

impl<K, V> Drop for Held<'_, '_, K, V>
where
    K: Hash + Eq + Ord + Clone,
    V: Send + 'static,
{
    fn drop(&mut self) {
        let guard = &self.pin.epoch;
        let committed = self.txn.is_committed();
        for i in 0..self.cells.len() {
            let next = match &self.cells[i] {
                held if committed => {
                    // SAFETY: the lock node is ours and not yet retired.
                    match unsafe { held.lock.deref() } {
                        // Relaxed: we stored `after` ourselves on this thread.
                        Node::Locked(l) => l.after.load(Ordering::Relaxed, guard),
                        Node::Version(_) => held.before,
                    }
                }
                held => held.before,
            };
            self.release_one(i, next);
        }
        if self.cells.len() > 1 {
            // A batch retires up to two nodes per key under one pin, while crossbeam-epoch
            // reclaims only a few per pin on its own: without a push, batch-heavy writers
            // outrun reclamation (measured: 1 s of 16-key batches grew RSS to ~900 MB). One
            // flush per batch hands our garbage over and lets a collection run now.
            guard.flush();
        }
    }
}

impl<K, V> Store<K, V>
where
    K: Hash + Eq + Ord + Clone,
    V: Send + 'static,
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
    /// assert_eq!(*store.get("a").unwrap().value, "1");
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
        if ops.len() > self.config.max_batch {
            return Err(Error::BatchTooLarge {
                len: ops.len(),
                max: self.config.max_batch,
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

        let pin = self.index.pin();
        let guard = &pin.epoch;
        let mut held = Held {
            store: self,
            pin: &pin,
            txn: Arc::new(Txn::new()),
            keys: ops.iter().map(Op::key).collect(),
            cells: Vec::with_capacity(ops.len()),
        };
        for op in &ops {
            held.lock(op.key());
        }

        // Validate against the befores: every failure is collected.
        let mut effects = Vec::with_capacity(ops.len());
        let mut conflicts = Vec::new();
        for (op, cell) in ops.iter().zip(&held.cells) {
            // SAFETY: `before` is kept alive by our lock (only we may retire it) and our pin.
            let before = match unsafe { cell.before.as_ref() } {
                Some(Node::Version(v)) => Some(v),
                _ => None,
            };
            match op.check(before) {
                Ok(effect) => effects.push((effect, before)),
                Err(c) => conflicts.push(c),
            }
        }
        if !conflicts.is_empty() {
            drop(held); // restores every before
            return Err(Error::BatchConflict(conflicts));
        }

        // Commit: one index, every after stored, then the one flip.
        let index = self.clock.next();
        for (held_cell, (effect, before)) in held.cells.iter().zip(effects) {
            let after = match effect {
                Effect::Write(value, flags) => Version::node(
                    value,
                    flags_or_kept(flags, before),
                    index,
                    before.map_or(index, |v| v.create_index),
                )
                .into_shared(guard),
                Effect::Remove => Shared::null(),
                Effect::Keep => held_cell.before,
            };
            // SAFETY: the lock node is ours, published, and not retired while we hold it.
            if let Node::Locked(l) = unsafe { held_cell.lock.deref() } {
                // Relaxed: published by the Release in `Txn::commit` below.
                l.after.store(after, Ordering::Relaxed);
            }
        }
        held.txn.commit();
        // Journal while every key is still held: its next writer waits for the release.
        let ticket = self.journal.as_ref().map(|journal| {
            let writes: Vec<(&K, Option<EntryRef<'_, V>>)> = ops
                .iter()
                .zip(&held.cells)
                .filter_map(|(op, held_cell)| {
                    // SAFETY: the lock node is ours, published, and not retired while we hold it.
                    let Node::Locked(l) = (unsafe { held_cell.lock.deref() }) else {
                        return None;
                    };
                    // Relaxed: we stored `after` ourselves on this thread.
                    let after = l.after.load(Ordering::Relaxed, guard);
                    if after == held_cell.before {
                        return None; // only checked: nothing written
                    }
                    // SAFETY: `after` is ours (see the commit loop), live while we hold the lock.
                    match unsafe { after.as_ref() } {
                        Some(Node::Version(v)) => Some((op.key(), Some(EntryRef::of(v)))),
                        Some(Node::Locked(_)) => None,
                        None => Some((op.key(), None)),
                    }
                })
                .collect();
            journal.record(Mutation::Batch {
                index,
                writes: &writes,
            })
        });
        drop(held); // releases every cell to its after
        Ok(Written { index, ticket })
    }

    /// Reads several keys as one atomic snapshot: the entries all held at one instant, so the
    /// result never shows part of a batch. Results are in the order of `keys` (a key listed
    /// twice is read once and reported twice).
    ///
    /// Unlike [`get`](Store::get) this is not lock-free: it locks the keys in key order like a
    /// batch, reads them, and releases them unchanged. It takes no index. Fails only with
    /// [`Error::BatchTooLarge`].
    ///
    /// ```
    /// use caskv::Store;
    /// let store: Store<&str, u8> = Store::new();
    /// store.set("a", 1);
    /// let got = store.get_many(&["b", "a"]).unwrap();
    /// assert!(got[0].is_none());
    /// assert_eq!(*got[1].as_ref().unwrap().value, 1);
    /// ```
    pub fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Entry<V>>>, Error<K, V>> {
        if keys.len() > self.config.max_batch {
            return Err(Error::BatchTooLarge {
                len: keys.len(),
                max: self.config.max_batch,
            });
        }
        let mut sorted: Vec<&K> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        let pin = self.index.pin();
        let mut held = Held {
            store: self,
            pin: &pin,
            txn: Arc::new(Txn::new()),
            keys: sorted.clone(),
            cells: Vec::with_capacity(sorted.len()),
        };
        for key in &sorted {
            held.lock(key);
        }
        let read: Vec<Option<Entry<V>>> = held
            .cells
            .iter()
            .map(|cell| {
                // SAFETY: `before` is kept alive by our lock and our pin.
                match unsafe { cell.before.as_ref() } {
                    Some(Node::Version(v)) => Some(Entry::of(v)),
                    _ => None,
                }
            })
            .collect();
        drop(held); // never committed: every cell goes back to its before
        Ok(keys
            .iter()
            .map(|k| match sorted.binary_search(&k) {
                Ok(i) => read[i].clone(),
                Err(_) => None,
            })
            .collect())
    }
}
