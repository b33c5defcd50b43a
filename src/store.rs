//! The public [`Store`]: single-key operations over the map of version cells.

use std::borrow::Borrow;
use std::convert::Infallible;
use std::hash::Hash;
use std::time::Duration;

use crate::cell::{restamp, Head, Node, Settling, Version, RETIRED, UNLOGGED};
use crate::clock::GlobalIndex;
use crate::entry::{Entry, EntryRef};
use crate::error::{Conflict, Error, Expected};
use crate::index::{CellRef, Index, Pin};
use crate::journal::{Journal, Mutation, Written};
use crate::sync::epoch::Shared;
use crate::sync::{Backoff, StdArc};

/// The default bound on operations in one batch.
pub const DEFAULT_MAX_BATCH: usize = 1000;

/// A concurrent versioned key-value store. See the [crate docs](crate) for the consistency model.
///
/// Keys need `Hash + Eq + Ord + Clone` (`Ord` gives batches their one global lock order and
/// listings their order). Values are stored behind a `std::sync::Arc` and shared with readers;
/// they must be `Send + 'static` because a replaced version is dropped later by the epoch
/// collector, possibly on another thread and after the store itself is gone.
///
/// # Example
/// ```
/// use caskv::Store;
/// let store: Store<String, String> = Store::new();
/// let created = store.set_cas("lock".into(), "owner-1".to_string(), 0).unwrap(); // create-only
/// assert!(store.set_cas("lock".into(), "owner-2".to_string(), 0).unwrap_err().is_conflict());
/// store.delete_cas(&"lock".to_string(), created).unwrap();
/// assert!(store.get("lock").is_none());
/// ```
pub struct Store<K, V> {
    pub(crate) index: Index<K, V>,
    pub(crate) clock: StdArc<GlobalIndex>,
    pub(crate) config: Config,
    /// Where committed mutations go, in per-key order (see [`crate::journal`]).
    pub(crate) journal: Option<Box<dyn Journal<K, V>>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_batch: usize,
    pub(crate) update_attempts: u32,
    pub(crate) update_backoff: (Duration, Duration),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_batch: DEFAULT_MAX_BATCH,
            update_attempts: 10,
            update_backoff: (Duration::from_micros(50), Duration::from_millis(10)),
        }
    }
}

/// Configures a [`Store`].
///
/// # Example
/// ```
/// use caskv::{GlobalIndex, Store};
/// use std::sync::Arc;
/// let index = Arc::new(GlobalIndex::starting_after(100));
/// let store: Store<u64, u64> = Store::builder().max_batch(16).global_index(index.clone()).build();
/// assert_eq!(store.set(1, 1), 101);
/// assert_eq!(index.high_water(), 101);
/// ```
#[derive(Debug, Default)]
pub struct StoreBuilder {
    config: Config,
    clock: Option<StdArc<GlobalIndex>>,
}

impl StoreBuilder {
    /// The most operations one batch may hold. Default [`DEFAULT_MAX_BATCH`] (1000).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.config.max_batch = max;
        self
    }

    /// The global index to draw from, shared with other stores or the service registry.
    /// Default: a fresh counter starting at 1.
    pub fn global_index(mut self, index: StdArc<GlobalIndex>) -> Self {
        self.clock = Some(index);
        self
    }

    /// Start a fresh counter above `high_water` (a restart). Default 0.
    ///
    /// # Panics
    /// If `high_water >= GlobalIndex::LIMIT` (2^63); see [`GlobalIndex::try_starting_after`].
    pub fn start_after(mut self, high_water: u64) -> Self {
        self.clock = Some(StdArc::new(GlobalIndex::starting_after(high_water)));
        self
    }

    /// Attempts [`Store::update`] makes before it gives up. Default 10 (at least 1).
    pub fn update_attempts(mut self, attempts: u32) -> Self {
        self.config.update_attempts = attempts.max(1);
        self
    }

    /// The first and the largest pause between [`Store::update`] attempts; each pause doubles
    /// up to `max` and is jittered uniformly below it. Default 50 µs and 10 ms.
    pub fn update_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.config.update_backoff = (first, max.max(first));
        self
    }

    /// Builds the store.
    pub fn build<K: Hash + Eq, V>(self) -> Store<K, V> {
        Store {
            index: Index::new(),
            clock: self.clock.unwrap_or_default(),
            config: self.config,
            journal: None,
        }
    }

    /// Builds a store that hands every committed mutation to `journal`, in per-key order
    /// (see [`Journal`]). Writers of a key wait while its previous mutation is being recorded,
    /// so single-key writes are no longer lock-free; reads still never wait.
    pub fn build_journaled<K: Hash + Eq, V>(self, journal: Box<dyn Journal<K, V>>) -> Store<K, V> {
        Store {
            journal: Some(journal),
            ..self.build()
        }
    }
}

/// A pinned read handle: many reads under one pin, each touching no shared memory.
///
/// Hold it briefly: while it lives, memory retired by writers cannot be reclaimed.
///
/// # Example
/// ```
/// use caskv::Store;
/// let store: Store<u64, String> = Store::new();
/// store.set(1, "one".to_string());
/// let pinned = store.pin();
/// let entry = pinned.get(&1).unwrap();
/// assert_eq!(entry.value, "one");
/// ```
pub struct Pinned<'s, K, V> {
    store: &'s Store<K, V>,
    pin: Pin<'s>,
}

/// Where a single-key write stands after looking at the current version.
enum Step<'g, V> {
    /// Try again from a fresh look (the cell was locked or retired).
    Retry,
    /// Write: CAS `cell` from `raw`.
    Write {
        cell: CellRef<'g, V>,
        raw: Shared<'g, Node<V>>,
        current: Option<&'g Version<V>>,
    },
    /// The key is absent and the decision needs nothing written.
    Absent,
}

impl<K, V> Store<K, V>
where
    K: Hash + Eq + Ord + Clone,
    V: Send + 'static,
{
    /// An empty store with the default configuration.
    pub fn new() -> Self {
        StoreBuilder::default().build()
    }

    /// The global index this store draws from.
    pub fn global_index(&self) -> &StdArc<GlobalIndex> {
        &self.clock
    }

    /// Pins the current thread for a series of reads (see [`Pinned`]).
    pub fn pin(&self) -> Pinned<'_, K, V> {
        Pinned {
            store: self,
            pin: self.index.pin(),
        }
    }

    /// The key's current entry, or `None`. Lock-free; never waits for a writer.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<&str, &str> = Store::new();
    /// store.set("k", "v");
    /// assert_eq!(*store.get("k").unwrap().value, "v");
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let pin = self.index.pin();
        let cell = self.index.get(key, &pin)?;
        cell.read(&pin.epoch).map(Entry::of)
    }

    /// Whether the key is present.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let pin = self.index.pin();
        self.index
            .get(key, &pin)
            .is_some_and(|cell| cell.read(&pin.epoch).is_some())
    }

    /// Sets the key, keeping its flags if it exists (0 for a new key). Returns the new
    /// `modify_index`.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<&str, &str> = Store::new();
    /// let a = store.set("k", "v1");
    /// let b = store.set("k", "v2");
    /// assert!(b > a);
    /// assert_eq!(store.get("k").unwrap().create_index, a);
    /// ```
    pub fn set(&self, key: K, value: impl Into<StdArc<V>>) -> u64 {
        self.write_set(key, value, None).index
    }

    /// Sets the key and its flags. Returns the new `modify_index`.
    pub fn set_with_flags(&self, key: K, value: impl Into<StdArc<V>>, flags: u64) -> u64 {
        self.write_set(key, value, Some(flags)).index
    }

    /// Compare-and-set on the index: `expected == 0` creates only if absent; `expected == N`
    /// updates only if the key's `modify_index` is N. Keeps existing flags.
    ///
    /// Fails with [`Error::Conflict`] (with the current entry) or, for N ≥ 1 on an absent key,
    /// [`Error::NotFound`]. A call whose condition fails at its first look allocates nothing and
    /// takes no index; one that first passes, loses a race to another writer and then fails has
    /// consumed an index (a gap in the sequence, never a reuse).
    pub fn set_cas(
        &self,
        key: K,
        value: impl Into<StdArc<V>>,
        expected: u64,
    ) -> Result<u64, Error<K, V>> {
        Ok(self.write_set_cas(key, value, expected, None)?.index)
    }

    /// [`set_cas`](Store::set_cas) that also sets the flags.
    pub fn set_cas_with_flags(
        &self,
        key: K,
        value: impl Into<StdArc<V>>,
        expected: u64,
        flags: u64,
    ) -> Result<u64, Error<K, V>> {
        Ok(self.write_set_cas(key, value, expected, Some(flags))?.index)
    }

    /// Deletes the key. Returns the index the delete took; [`Error::NotFound`] if absent.
    pub fn delete(&self, key: &K) -> Result<u64, Error<K, V>> {
        Ok(self.write_delete(key, None)?.index)
    }

    /// Deletes the key only if its `modify_index` is `expected` (≥ 1).
    pub fn delete_cas(&self, key: &K, expected: u64) -> Result<u64, Error<K, V>> {
        Ok(self.write_delete(key, Some(expected))?.index)
    }

    /// Value-based compare-and-set: if the current value equals `expected` (`None` matches an
    /// absent key), set it to `new` (`None` clears the key).
    ///
    /// Returns the index of the write, or `Ok(None)` when absent was expected and absent is
    /// asked for (nothing to write). A failed compare is reported as [`Error::Conflict`] with
    /// the current entry, never as a silent no-op.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<&str, String> = Store::new();
    /// store.compare_and_set("k", None, Some("a".to_string())).unwrap(); // only if absent
    /// let err = store.compare_and_set("k", Some(&"b".to_string()), None).unwrap_err();
    /// assert_eq!(*err.conflict().unwrap().current.as_ref().unwrap().value, "a");
    /// ```
    pub fn compare_and_set(
        &self,
        key: K,
        expected: Option<&V>,
        new: Option<V>,
    ) -> Result<Option<u64>, Error<K, V>>
    where
        V: PartialEq,
    {
        Ok(self
            .write_compare_and_set(key, expected, new)?
            .map(|w| w.index))
    }

    /// `set`/`set_with_flags` with the journal ticket.
    pub(crate) fn write_set(
        &self,
        key: K,
        value: impl Into<StdArc<V>>,
        flags: Option<u64>,
    ) -> Written {
        match self.put(key, value, |_, current| {
            Ok::<_, Infallible>(flags_or_kept(flags, current))
        }) {
            Ok(written) => written,
            // The decision above never fails.
            Err(never) => match never {},
        }
    }

    /// `set_cas`/`set_cas_with_flags` with the journal ticket.
    pub(crate) fn write_set_cas(
        &self,
        key: K,
        value: impl Into<StdArc<V>>,
        expected: u64,
        flags: Option<u64>,
    ) -> Result<Written, Error<K, V>> {
        self.put(key, value, |key, current| {
            check_index(key, expected, current)?;
            Ok(flags_or_kept(flags, current))
        })
    }

    /// `delete` (`expected: None`) and `delete_cas` with the journal ticket.
    pub(crate) fn write_delete(
        &self,
        key: &K,
        expected: Option<u64>,
    ) -> Result<Written, Error<K, V>> {
        if expected == Some(0) {
            return Err(Error::CreateOnlyDelete(key.clone()));
        }
        let removed = self.remove(key, |key, current| match (expected, current) {
            (Some(n), _) => check_index(key, n, current).map(|()| true),
            (None, Some(_)) => Ok(true),
            (None, None) => Err(Error::NotFound(key.clone())),
        })?;
        removed.ok_or_else(|| Error::NotFound(key.clone()))
    }

    /// `compare_and_set` with the journal ticket.
    pub(crate) fn write_compare_and_set(
        &self,
        key: K,
        expected: Option<&V>,
        new: Option<V>,
    ) -> Result<Option<Written>, Error<K, V>>
    where
        V: PartialEq,
    {
        let check = |key: &K, current: Option<&Version<V>>| -> Result<(), Error<K, V>> {
            if value_matches(expected, current) {
                Ok(())
            } else {
                Err(Error::Conflict(Conflict {
                    key: key.clone(),
                    expected: if expected.is_some() {
                        Expected::Value
                    } else {
                        Expected::Absent
                    },
                    current: current.map(Entry::of),
                }))
            }
        };
        match new {
            Some(value) => self
                .put(key, value, |key, current| {
                    check(key, current)?;
                    Ok(flags_or_kept(None, current))
                })
                .map(Some),
            None => self.remove(&key, |key, current| {
                check(key, current)?;
                Ok(current.is_some())
            }),
        }
    }

    /// Reads the key, applies `f` to its value (`None` when absent), and sets the result with a
    /// CAS; on a conflict it retries with exponential backoff and jitter, and gives up with
    /// [`Error::RetriesExhausted`] after the configured attempts. `f` must be pure: it may run
    /// once per attempt.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<&str, u64> = Store::new();
    /// store.update("hits", |v| v.copied().unwrap_or(0) + 1).unwrap();
    /// store.update("hits", |v| v.copied().unwrap_or(0) + 1).unwrap();
    /// assert_eq!(*store.get("hits").unwrap().value, 2);
    /// ```
    pub fn update<F>(&self, key: K, f: F) -> Result<u64, Error<K, V>>
    where
        F: FnMut(Option<&V>) -> V,
    {
        Ok(self.write_update(key, f, |_, _| Ok(()))?.index)
    }

    /// `update` with the journal ticket.
    /// `check` sees each new value before it is written and can refuse it.
    pub(crate) fn write_update<F>(
        &self,
        key: K,
        mut f: F,
        check: impl Fn(&K, &V) -> Result<(), Error<K, V>>,
    ) -> Result<Written, Error<K, V>>
    where
        F: FnMut(Option<&V>) -> V,
    {
        let (first, max) = self.config.update_backoff;
        let mut pause = first;
        for attempt in 1..=self.config.update_attempts {
            let current = self.get(&key);
            let new = f(current.as_ref().map(|e| &*e.value));
            check(&key, &new)?;
            let expected = current.map_or(0, |e| e.modify_index);
            match self.write_set_cas(key.clone(), new, expected, None) {
                Ok(written) => return Ok(written),
                Err(e) if e.is_conflict() || e.is_not_found() => {
                    if attempt < self.config.update_attempts {
                        let jittered = pause.mul_f64(fastrand::f64());
                        std::thread::sleep(jittered);
                        pause = (pause * 2).min(max);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::RetriesExhausted {
            key,
            attempts: self.config.update_attempts,
        })
    }

    /// The keys present, sorted. Weakly consistent: a key written or deleted during the call
    /// may or may not appear, but every key present throughout the call does.
    pub fn keys(&self) -> Vec<K> {
        self.keys_where(|_| true)
    }

    /// The keys present that satisfy `filter`, sorted (weakly consistent, as [`keys`](Store::keys)).
    pub fn keys_where(&self, mut filter: impl FnMut(&K) -> bool) -> Vec<K> {
        let pin = self.index.pin();
        let mut keys = Vec::new();
        self.index.for_each(&pin, |k, cell| {
            if filter(k) && cell.read(&pin.epoch).is_some() {
                keys.push(k.clone());
            }
        });
        keys.sort_unstable();
        keys
    }

    /// The keys present that start with `prefix`, sorted.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<String, u8> = Store::new();
    /// for k in ["b/2", "a/1", "b/1"] { store.set(k.to_string(), 0); }
    /// assert_eq!(store.keys_with_prefix("b/"), ["b/1", "b/2"]);
    /// ```
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<K>
    where
        K: AsRef<str>,
    {
        self.keys_where(|k| k.as_ref().starts_with(prefix))
    }

    /// Every present entry, sorted by key (weakly consistent, as [`keys`](Store::keys)).
    pub fn entries(&self) -> Vec<(K, Entry<V>)> {
        let pin = self.index.pin();
        let mut out = Vec::new();
        self.index.for_each(&pin, |k, cell| {
            if let Some(v) = cell.read(&pin.epoch) {
                out.push((k.clone(), Entry::of(v)));
            }
        });
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The number of keys present. Counts by a scan (O(n)) and is weakly consistent.
    pub fn len(&self) -> usize {
        let pin = self.index.pin();
        let mut n = 0;
        self.index.for_each(&pin, |_, cell| {
            if cell.read(&pin.epoch).is_some() {
                n += 1;
            }
        });
        n
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with every present entry whose head is settled: a key being written by a batch
    /// or being journaled is waited for, so every version passed to `f` has reached the journal.
    /// Weakly consistent like [`entries`](Store::entries); unsorted. (A snapshot's scan.)
    pub(crate) fn for_each_settled(&self, mut f: impl FnMut(&K, EntryRef<'_, V>)) {
        let pin = self.index.pin();
        self.index.for_each(&pin, |k, cell| {
            let mut backoff = Backoff::new();
            loop {
                match cell.load(&pin.epoch).1 {
                    Head::Locked(_) | Head::Unlogged(_) => backoff.snooze(),
                    Head::Present(v) => return f(k, EntryRef::of(v)),
                    Head::Vacant | Head::Retired => return,
                }
            }
        });
    }

    /// Installs a recovered version for a key that has none yet, bypassing the journal (it came
    /// from there). Returns `false` if the key already had a value. For recovery, before the
    /// store is shared.
    pub(crate) fn restore(
        &self,
        key: K,
        value: V,
        flags: u64,
        modify_index: u64,
        create_index: u64,
    ) -> bool {
        let pin = self.index.pin();
        let cell = self.index.get_or_insert_vacant(key, &pin);
        let (raw, head) = cell.load(&pin.epoch);
        if !matches!(head, Head::Vacant) {
            return false;
        }
        let node = Version::node(StdArc::new(value), flags, modify_index, create_index);
        cell.swap_from(raw, node, &pin.epoch).is_ok()
    }

    /// Looks at the key's cell once: where a write must CAS from, or why it must retry.
    fn observe<'g>(
        &'g self,
        key: &K,
        create: bool,
        pin: &'g Pin<'_>,
        backoff: &mut Backoff,
    ) -> Step<'g, V> {
        let cell = match self.index.get(key, pin) {
            Some(cell) => cell,
            None if create => self.index.get_or_insert_vacant(key.clone(), pin),
            None => return Step::Absent,
        };
        let (raw, head) = cell.load(&pin.epoch);
        let current = match head {
            Head::Retired => {
                // Help unlink the dead cell, then start over on a fresh one.
                self.index.unlink(key, &cell, pin);
                return Step::Retry;
            }
            Head::Locked(_) | Head::Unlogged(_) => {
                // A batch holds the key, or a write to it is being journaled: wait.
                backoff.snooze();
                return Step::Retry;
            }
            Head::Vacant => None,
            Head::Present(v) => Some(v),
        };
        Step::Write { cell, raw, current }
    }

    /// The write path of every single-key put: `decide` sees the current version and returns
    /// the flags to write, or the error to report. The value is moved into a node only once a
    /// decision to write was made, and that node is reused across lost races.
    fn put<E>(
        &self,
        key: K,
        value: impl Into<StdArc<V>>,
        mut decide: impl FnMut(&K, Option<&Version<V>>) -> Result<u64, E>,
    ) -> Result<Written, E> {
        let pin = self.index.pin();
        let guard = &pin.epoch;
        let mut backoff = Backoff::new();
        // First decision: nothing is allocated until it says "write".
        let mut create = false;
        let (mut cell, mut raw, mut current, mut flags) = loop {
            match self.observe(&key, create, &pin, &mut backoff) {
                Step::Retry => continue,
                Step::Absent => {
                    decide(&key, None)?;
                    create = true;
                }
                Step::Write { cell, raw, current } => {
                    let flags = decide(&key, current)?;
                    break (cell, raw, current, flags);
                }
            }
        };
        let mut index = self.clock.next();
        let mut node = Version::node(
            value.into(),
            flags,
            index,
            current.map_or(index, |v| v.create_index),
        );
        if self.journal.is_some() {
            node = node.with_tag(UNLOGGED);
        }
        loop {
            match cell.swap_from(raw, node, guard) {
                Ok(installed) => {
                    if !raw.is_null() {
                        // SAFETY: `raw` was the head and is unlinked by our CAS; readers pinned
                        // before now may still hold it, which the collector waits for.
                        unsafe { guard.defer_destroy(raw) };
                    }
                    let ticket = self.journal.as_ref().map(|journal| {
                        #[allow(
                            clippy::needless_borrow,
                            reason = "`CellRef` is an `Arc` under loom"
                        )]
                        let _settle = Settling::new(&cell, installed);
                        // SAFETY: `installed` is the head we just published; only we may
                        // replace it (it is settling), so it is live while we are pinned.
                        let entry = match unsafe { installed.deref() } {
                            Node::Version(v) => EntryRef::of(v),
                            Node::Locked(_) => unreachable!("a put installs a version"),
                        };
                        journal.record(Mutation::Set { key: &key, entry })
                    });
                    return Ok(Written { index, ticket });
                }
                Err(back) => node = back,
            }
            // Lost a race: look again, decide again, restamp the same node.
            (cell, raw, current, flags) = loop {
                match self.observe(&key, true, &pin, &mut backoff) {
                    Step::Retry | Step::Absent => continue,
                    Step::Write { cell, raw, current } => {
                        let flags = decide(&key, current)?;
                        break (cell, raw, current, flags);
                    }
                }
            };
            index = self.clock.next();
            restamp(
                &mut node,
                flags,
                index,
                current.map_or(index, |v| v.create_index),
            );
        }
    }

    /// The write path of every single-key removal: `decide` returns whether to remove (a
    /// present key) or the error to report. Returns the index of the delete, or `None` when
    /// the key was absent and `decide` accepted that.
    fn remove<E>(
        &self,
        key: &K,
        mut decide: impl FnMut(&K, Option<&Version<V>>) -> Result<bool, E>,
    ) -> Result<Option<Written>, E> {
        let pin = self.index.pin();
        let guard = &pin.epoch;
        let mut backoff = Backoff::new();
        loop {
            match self.observe(key, false, &pin, &mut backoff) {
                Step::Retry => continue,
                Step::Absent => {
                    decide(key, None)?;
                    return Ok(None);
                }
                Step::Write { cell, raw, current } => {
                    if !decide(key, current)? || current.is_none() {
                        return Ok(None);
                    }
                    let index = self.clock.next();
                    let tag = if self.journal.is_some() { UNLOGGED } else { 0 };
                    if cell.retire_from(raw, tag, guard) {
                        let ticket = self.journal.as_ref().map(|journal| {
                            let retired = Shared::null().with_tag(RETIRED | UNLOGGED);
                            #[allow(
                                clippy::needless_borrow,
                                reason = "`CellRef` is an `Arc` under loom"
                            )]
                            let _settle = Settling::new(&cell, retired);
                            journal.record(Mutation::Delete { key, index })
                        });
                        // Only once settled: a re-create on a fresh cell must not reach the
                        // journal before this delete.
                        self.index.unlink(key, &cell, &pin);
                        // SAFETY: `raw` (a version) is unlinked by the retiring CAS; the
                        // collector frees it once every reader pinned before now is gone.
                        unsafe { guard.defer_destroy(raw) };
                        return Ok(Some(Written { index, ticket }));
                    }
                }
            }
        }
    }
}

impl Store<(), ()> {
    /// A builder for a configured store (the key and value types come from `build`).
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }
}

impl<K, V> Default for Store<K, V>
where
    K: Hash + Eq + Ord + Clone,
    V: Send + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> std::fmt::Debug for Store<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("high_water", &self.clock.high_water())
            .field("max_batch", &self.config.max_batch)
            .finish_non_exhaustive()
    }
}

impl<K, V> Pinned<'_, K, V>
where
    K: Hash + Eq + Ord + Clone,
    V: Send + 'static,
{
    /// The key's current entry, borrowed: no reference count is touched.
    pub fn get<Q>(&self, key: &Q) -> Option<EntryRef<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let cell = self.store.index.get(key, &self.pin)?;
        cell.read(&self.pin.epoch).map(EntryRef::of)
    }
}

/// Flags to write: the given ones, else the current version's, else 0.
pub(crate) fn flags_or_kept<V>(given: Option<u64>, current: Option<&Version<V>>) -> u64 {
    given.unwrap_or_else(|| current.map_or(0, |v| v.flags))
}

/// The index condition of `set_cas`/`delete_cas`/`check_index`: 0 means absent, N means
/// present at `modify_index` N.
pub(crate) fn check_index<K: Clone, V>(
    key: &K,
    expected: u64,
    current: Option<&Version<V>>,
) -> Result<(), Error<K, V>> {
    match (expected, current) {
        (0, None) => Ok(()),
        (n, Some(v)) if n != 0 && v.modify_index == n => Ok(()),
        (_, None) => Err(Error::NotFound(key.clone())),
        (_, Some(v)) => Err(Error::Conflict(Conflict {
            key: key.clone(),
            expected: Expected::Index(expected),
            current: Some(Entry::of(v)),
        })),
    }
}

/// The value condition of `compare_and_set`: `None` matches absent.
pub(crate) fn value_matches<V: PartialEq>(
    expected: Option<&V>,
    current: Option<&Version<V>>,
) -> bool {
    match (expected, current) {
        (None, None) => true,
        (Some(e), Some(v)) => *e == *v.value,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    //! Small enough for Miri (`ci/miri.sh`): every path that dereferences or retires a node.
    use super::*;
    use crate::Op;

    #[test]
    fn set_get_delete_recreate() {
        let store: Store<u32, String> = Store::new();
        let a = store.set(1, "a".to_string());
        assert_eq!(store.pin().get(&1).unwrap().value, "a");
        let b = store.set_cas(1, "b".to_string(), a).unwrap();
        assert!(store.set_cas(1, "c".to_string(), a).is_err());
        store.delete_cas(&1, b).unwrap();
        assert!(store.get(&1).is_none());
        store.set(1, "d".to_string());
        assert_eq!(*store.get(&1).unwrap().value, "d");
    }

    #[test]
    fn batches_commit_and_abort() {
        let store: Store<u32, String> = Store::new();
        let a = store.set(1, "a".to_string());
        let i = store
            .batch(vec![
                Op::set_cas(1, "b".to_string(), a),
                Op::set(2, "x".to_string()),
                Op::check_index(3, 0),
            ])
            .unwrap();
        assert!(store
            .batch(vec![Op::set_cas(1, "c".to_string(), a), Op::delete(2)])
            .is_err());
        assert_eq!(store.get(&1).unwrap().modify_index, i);
        store.batch(vec![Op::delete(1), Op::delete(2)]).unwrap();
        assert!(store.is_empty());
    }

    #[test]
    fn threads_race_on_one_key() {
        let store: Store<u32, u64> = Store::new();
        store.set(0, 0);
        std::thread::scope(|s| {
            for t in 0..3 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..20u64 {
                        match (t + i) % 4 {
                            0 => drop(store.delete(&0)),
                            1 => drop(store.set(0, i)),
                            2 => drop(store.batch(vec![Op::set(0, i), Op::set(1, i)])),
                            _ => drop(store.get(&0)),
                        }
                    }
                });
            }
        });
        let _ = store.entries();
    }
}
