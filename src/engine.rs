//! The engine under [`Store`](crate::Store): the table of version cells, the global index, the
//! configuration and the journal, and the single-key write paths that change a cell
//! (`observe`, `put`, `remove`, `restore`) with their settling. `store.rs` is the public
//! facade over it (what each operation decides, and the listings); `batch.rs` is the other
//! writer over the same engine.

use std::borrow::Borrow;
use std::hash::Hash;
use std::time::Duration;

use crate::cache::{self, Count, Listener, Policy, RemovalCause, Removed};
use crate::cell::{
    self, classify, visible, Cas, Cell, Life, Meta, Record, Settling, State, Tomb, Unpublished,
    UNLOGGED,
};
use crate::defaults;
use crate::entry::{Entry, EntryRef};
use crate::error::{Conflict, Error, Expected};
use crate::expiry::{self, Clock, SystemClock};
use crate::global_index::GlobalIndex;
use crate::journal::{Journal, Mutation, Written};
use crate::sync::epoch::Guard;
use crate::sync::{AtomicBool, Backoff, Ordering, StdArc};
use crate::table::{Claim, Located, Raw, Table};
use crate::watch::{Observer, Seen, Waiters};

/// What a [`Store`](crate::Store) is made of.
pub(crate) struct Engine<K, V> {
    pub(crate) raw: Raw<K, V>,
    pub(crate) global_index: StdArc<GlobalIndex>,
    pub(crate) config: Config,
    /// Where committed mutations go, in per-key order (see [`crate::journal`]).
    pub(crate) journal: Option<Box<dyn Journal<K, V>>>,
    /// Whether a version with a deadline was ever written (a store that never sets a TTL
    /// never scans for expired versions).
    pub(crate) has_deadlines: AtomicBool,
    /// The bound and its eviction policy (`None`: unbounded).
    pub(crate) policy: Option<Policy<K, V>>,
    /// Told of every eviction and expiry (see [`crate::cache::Removed`]).
    pub(crate) listener: Option<Listener<K, V>>,
    /// The change feed this store reports its mutations to (`None`: none of its own; its
    /// indices are then skipped in the index's feed, if the index has one).
    pub(crate) feed: Option<StdArc<dyn Observer<K, V>>>,
    /// The watchers of keys and prefixes, woken by every applied mutation.
    pub(crate) waiters: Waiters<K>,
}

/// A store's settings ([`StoreBuilder`](crate::StoreBuilder)).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) max_batch: usize,
    pub(crate) capacity: usize,
    pub(crate) update_attempts: u32,
    pub(crate) update_backoff: (Duration, Duration),
    /// What deadlines are read against (only for versions that have one).
    pub(crate) clock: StdArc<dyn Clock>,
    /// The TTL of a write that names none (`None`: such writes never expire).
    pub(crate) default_ttl: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_batch: defaults::MAX_BATCH,
            capacity: 0,
            update_attempts: defaults::UPDATE_ATTEMPTS,
            update_backoff: defaults::UPDATE_BACKOFF,
            clock: StdArc::new(SystemClock),
            default_ttl: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("max_batch", &self.max_batch)
            .field("capacity", &self.capacity)
            .field("update_attempts", &self.update_attempts)
            .field("update_backoff", &self.update_backoff)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

/// Where a single-key write stands after looking at the key's slot.
enum Step<'g, K, V> {
    /// Try again from a fresh look (the slot was locked, settling or frozen).
    Retry,
    /// The key has a slot: CAS it from `word`.
    Slot {
        slot: &'g Cell,
        word: u64,
        current: Option<&'g Record<K, V>>,
    },
    /// The key has no slot: claim the empty `slot` of `table`.
    Vacant { table: &'g Table, slot: &'g Cell },
}

impl<K, V> Engine<K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// The record a reader sees for `key` under `guard`.
    #[inline(always)]
    pub(crate) fn read<'g, Q>(&self, key: &Q, guard: &'g Guard) -> Option<&'g Record<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.find_live(key, guard);
        if let Some(policy) = &self.policy {
            match found {
                Some(record) => {
                    record.life.touch();
                    policy.counters.add(Count::Hit);
                }
                None => policy.counters.add(Count::Miss),
            }
        }
        found
    }

    /// The record a reader sees for `key`, without counting the read or bumping its hint.
    #[inline(always)]
    pub(crate) fn find_live<'g, Q>(&self, key: &Q, guard: &'g Guard) -> Option<&'g Record<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let table = self.raw.table(guard);
        let word = self.raw.find(table, self.raw.hash(key), key)?;
        // SAFETY: `word` was loaded from a slot of a table reached under `guard`.
        unsafe { self.resolve(word, guard) }
    }

    /// What a reader sees through `word`: [`visible`], unless expired.
    ///
    /// # Safety
    /// `word` was loaded from a slot of a table reached under `guard`.
    #[inline]
    pub(crate) unsafe fn resolve<'g>(
        &self,
        word: u64,
        guard: &'g Guard,
    ) -> Option<&'g Record<K, V>> {
        // SAFETY: the caller's contract.
        self.live(unsafe { visible(word, guard) }?)
    }

    /// `record`, unless its deadline has come (an expired version reads as absent at once).
    #[inline(always)]
    pub(crate) fn live<'g>(&self, record: &'g Record<K, V>) -> Option<&'g Record<K, V>> {
        let deadline = record.life.deadline();
        if deadline != 0 && self.expired(deadline) {
            return None;
        }
        Some(record)
    }

    /// Whether `deadline` (not 0) has come.
    #[cold]
    #[inline(never)]
    fn expired(&self, deadline: u64) -> bool {
        expiry::has_expired(deadline, self.config.clock.now_ms())
    }

    /// The deadline of a version written now with `ttl` (else the store's default TTL).
    #[inline]
    pub(crate) fn deadline(&self, ttl: Option<Duration>) -> u64 {
        match ttl.or(self.config.default_ttl) {
            None => 0,
            Some(ttl) => {
                let deadline = expiry::deadline_after(self.config.clock.now_ms(), ttl);
                self.note_deadline(deadline);
                deadline
            }
        }
    }

    /// Remembers that versions with deadlines exist (before one is written).
    #[inline]
    fn note_deadline(&self, deadline: u64) {
        // Relaxed: a hint for `purge_expired`; a scan that misses a deadline written
        // concurrently is a scan that began before it, and the next one sees it.
        if deadline != 0 && !self.has_deadlines.load(Ordering::Relaxed) {
            self.has_deadlines.store(true, Ordering::Relaxed);
        }
    }

    /// Hands the mutation applied at `index` to the store's feed; a store without one skips the
    /// index in its index's feed (if that has one), so the feed never waits for it.
    #[inline]
    pub(crate) fn changed<'m>(&self, index: u64, mutation: impl FnOnce() -> Mutation<'m, K, V>)
    where
        K: 'm,
        V: 'm,
    {
        match &self.feed {
            Some(feed) => feed.applied(&mutation()),
            None => self.global_index.skip(index),
        }
    }

    /// The state of `key` as a watch sees it (see [`Seen`]), and the deadline of its version
    /// (0: none). An expired version found here is first deleted at its own index.
    pub(crate) fn seen<Q>(&self, key: &Q) -> (Seen<V>, u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.raw.hash(key);
        loop {
            let guard = self.raw.pin();
            let table = self.raw.table(&guard);
            let Some(word) = self.raw.find(table, hash, key) else {
                return (Seen::absent(self.raw.forgotten()), 0);
            };
            // SAFETY: `word` was loaded from a slot of a table reached under `guard`.
            let (index, record) = unsafe { cell::seen::<K, V>(word, &guard) };
            match record {
                // Index 0: a slot a batch claimed and left absent, the key never written.
                None if index == 0 => return (Seen::absent(self.raw.forgotten()), 0),
                None => return (Seen::absent(index), 0),
                Some(r) if self.live(r).is_some() => {
                    return (Seen::present(Entry::of(r)), r.life.deadline())
                }
                Some(_) => {
                    // Expired: delete it at its own index (the write path's look does), then
                    // look again.
                    let mut backoff = Backoff::new();
                    while let Step::Retry = self.observe(hash, key, &guard, &mut backoff) {}
                }
            }
        }
    }

    /// Nowhere yet to keep removals for the listener (see [`Removed`]).
    #[inline]
    pub(crate) fn removed(&self) -> Removed<'_, K, V> {
        Removed::new(self.listener.as_ref())
    }

    /// Replaces the expired version `word` of `slot` (the record `r`) with a delete at a fresh
    /// index, journaled as one, as if a writer had deleted it when it expired. Returns whether
    /// this call did (a lost race changed the slot: the caller looks again). The removal is
    /// kept in `removed` for the listener.
    #[cold]
    #[inline(never)]
    pub(crate) fn expire(
        &self,
        slot: &Cell,
        word: u64,
        r: &Record<K, V>,
        guard: &Guard,
        removed: &mut Removed<'_, K, V>,
    ) -> bool {
        self.delete_version(slot, word, r, guard, RemovalCause::Expired, removed)
    }

    /// Evicts the version `word` of `slot` (the record `r`): a delete at a fresh index,
    /// journaled as one. Returns whether this call did (else a writer changed the slot first).
    /// The removal is kept in `removed` for the listener.
    pub(crate) fn evict(
        &self,
        slot: &Cell,
        word: u64,
        r: &Record<K, V>,
        guard: &Guard,
        removed: &mut Removed<'_, K, V>,
    ) -> bool {
        self.delete_version(slot, word, r, guard, RemovalCause::Capacity, removed)
    }

    /// CASes `slot` from the record `word` (`r`) to a new tomb at a fresh index; journals the
    /// delete, tells the policy, which counts it by `cause`, and keeps it in `removed` for the
    /// listener. Returns whether the CAS won.
    fn delete_version(
        &self,
        slot: &Cell,
        word: u64,
        r: &Record<K, V>,
        guard: &Guard,
        cause: RemovalCause,
        removed: &mut Removed<'_, K, V>,
    ) -> bool {
        let bits = if self.journal.is_some() { UNLOGGED } else { 0 };
        let key = &r.header.keyed.key;
        let index = self.global_index.take();
        let mut tomb = Unpublished::<K, V>::new(cell::EMPTY);
        tomb.word = Tomb::word(cell::tag_of(word), key.clone(), index, bits);
        if slot.replace(word, tomb.word) == Cas::Lost {
            // `tomb` is freed unpublished; the index is a gap, never reused.
            self.global_index.skip(index);
            return false;
        }
        let installed = tomb.publish();
        // SAFETY: the record we replaced is unreachable from the slot now; retired once, by us.
        unsafe { cell::retire::<K, V>(word, guard) };
        if let Some(journal) = &self.journal {
            let _settle = Settling::new(slot, installed);
            // Ordered before whatever write meets the key next (it waits for this settle);
            // nobody waits for this delete's own ticket.
            let _ticket = journal.record(Mutation::Delete { key, index });
        }
        self.changed(index, || Mutation::Delete { key, index });
        self.waiters.wake(key, || self.raw.hash(key));
        if let Some(policy) = &self.policy {
            policy.forget(word, r);
            policy.counters.add(match cause {
                RemovalCause::Capacity => Count::Eviction,
                RemovalCause::Expired => Count::Expiration,
            });
        }
        removed.push(r, cause);
        true
    }

    /// Tells the policy (if any) that the record of word `installed` made `hash`'s key present.
    pub(crate) fn admit(&self, hash: u64, installed: u64, guard: &Guard) {
        if let Some(policy) = &self.policy {
            // SAFETY: `installed` is a record its caller published, live for `guard`.
            let record = unsafe { Raw::<K, V>::record(installed, guard) };
            policy.admit(self, hash, record, guard);
        }
    }

    /// Replaces every expired version with its delete (see [`Engine::expire`]); returns how
    /// many. Weakly consistent, as a listing: a version that expires during the scan may be
    /// left for the next.
    pub(crate) fn purge_expired(&self) -> usize {
        // Relaxed: see `note_deadline`.
        if !self.has_deadlines.load(Ordering::Relaxed) {
            return 0;
        }
        let guard = self.raw.pin();
        let mut purged = 0;
        // Holds no lock: each removal is delivered as soon as it is made.
        self.raw.for_each(&guard, |_, slot, word| {
            if word & (cell::LOCKED | cell::UNLOGGED | cell::FROZEN) != 0 {
                return; // being written or moved: its writer or the next scan sees to it
            }
            // SAFETY: `word` was loaded from a slot under `guard`.
            if let Some(r) = unsafe { visible::<K, V>(word, &guard) } {
                if self.live(r).is_none() && self.expire(slot, word, r, &guard, &mut self.removed())
                {
                    purged += 1;
                }
            }
        });
        purged
    }

    /// Calls `f` with every present entry whose word is settled: a key being written by a batch
    /// or being journaled is waited for, so every version passed to `f` has reached the journal.
    /// Weakly consistent like [`entries`](Store::entries); unsorted. (A snapshot's scan.)
    pub(crate) fn for_each_settled(&self, mut f: impl FnMut(&K, EntryRef<'_, V>)) {
        let guard = self.raw.pin();
        self.raw.for_each(&guard, |k, slot, mut word| {
            let mut backoff = Backoff::new();
            loop {
                // SAFETY: `word` was loaded from a slot under `guard`.
                match unsafe { classify::<K, V>(word, &guard) } {
                    State::Locked | State::Unlogged => backoff.snooze(),
                    State::Present(r) | State::Frozen(Some(r)) => {
                        if let Some(r) = self.live(r) {
                            f(k, EntryRef::of(r));
                        }
                        return;
                    }
                    State::Absent | State::Frozen(None) => return,
                }
                word = slot.load();
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
        deadline: u64,
    ) -> bool {
        let guard = self.raw.pin();
        let hash = self.raw.hash(&key);
        self.note_deadline(deadline);
        let meta = Meta {
            modify_index,
            create_index,
            flags,
        };
        let mut node = Unpublished::<K, V>::new(cell::EMPTY);
        node.word = Record::word(
            cell::hash_tag(hash),
            key,
            value,
            meta,
            Life::new(deadline, 0),
            0,
        );
        loop {
            // SAFETY: `node` is ours and unpublished.
            let key = unsafe { &Raw::<K, V>::record(node.word, &guard).header.keyed.key };
            match self.observe(hash, key, &guard, &mut Backoff::new()) {
                Step::Retry => continue,
                Step::Vacant { table, slot } => match self.raw.claim(table, slot, node.word) {
                    Claim::Claimed => {
                        let installed = node.publish();
                        self.admit(hash, installed, &guard);
                        return true;
                    }
                    Claim::Lost => continue,
                    Claim::Resizing => self.raw.help_resize(table, 1, &guard),
                },
                Step::Slot {
                    current: Some(_), ..
                } => return false, // `node` is freed unpublished
                Step::Slot { slot, word, .. } => {
                    if slot.replace(word, node.word) == Cas::Won {
                        let installed = node.publish();
                        // SAFETY: the tomb is replaced by our CAS; retired once, by us.
                        unsafe { cell::retire::<K, V>(word, &guard) };
                        self.admit(hash, installed, &guard);
                        return true;
                    }
                }
            }
        }
    }

    /// Looks at the key's slot once: where a write must CAS from or claim, or why it must
    /// retry (after waiting for a lock holder or helping a resize).
    #[inline]
    fn observe<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        guard: &'g Guard,
        backoff: &mut Backoff,
    ) -> Step<'g, K, V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let table = self.raw.table(guard);
        match self.raw.locate(table, hash, key) {
            Located::Resizing => {
                self.raw.help_resize(table, 1, guard);
                Step::Retry
            }
            Located::Vacant { slot } => Step::Vacant { table, slot },
            // SAFETY: `word` was loaded from a slot under `guard`.
            Located::Found { slot, word } => match unsafe { classify(word, guard) } {
                State::Locked | State::Unlogged => {
                    // A batch holds the key, or a write to it is being journaled: wait.
                    backoff.snooze();
                    Step::Retry
                }
                State::Frozen(_) => {
                    self.raw.help_resize(table, 1, guard);
                    Step::Retry
                }
                State::Absent => Step::Slot {
                    slot,
                    word,
                    current: None,
                },
                State::Present(r) => {
                    if self.live(r).is_none() {
                        // Expired: its delete comes first, at its own index; then look again.
                        // (A single-key writer holds no lock: the listener is told here.)
                        self.expire(slot, word, r, guard, &mut self.removed());
                        return Step::Retry;
                    }
                    Step::Slot {
                        slot,
                        word,
                        current: Some(r),
                    }
                }
            },
        }
    }

    /// The write path of every single-key put: `decide` sees the current version and returns
    /// the flags to write, or the error to report. The record is allocated only once a decision
    /// to write was made, and it is reused (restamped) across lost races.
    pub(crate) fn put<E>(
        &self,
        key: K,
        value: V,
        deadline: u64,
        mut decide: impl FnMut(&K, Option<&Record<K, V>>) -> Result<u64, E>,
    ) -> Result<Written, E> {
        let guard = self.raw.pin();
        let hash = self.raw.hash(&key);
        let mut backoff = Backoff::new();
        let bits = if self.journal.is_some() { UNLOGGED } else { 0 };
        // The key and value until the first decision to write; then the unpublished record.
        let mut parts = Some((key, value));
        let mut node = Unpublished::<K, V>::new(cell::EMPTY);
        loop {
            let key = match &parts {
                Some((key, _)) => key,
                // SAFETY: `node` is ours and unpublished.
                None => unsafe { &Raw::<K, V>::record(node.word, &guard).header.keyed.key },
            };
            let step = self.observe(hash, key, &guard, &mut backoff);
            let (vacant, slot, word, current) = match step {
                Step::Retry => continue,
                Step::Vacant { table, slot } => (Some(table), slot, cell::EMPTY, None),
                Step::Slot {
                    slot,
                    word,
                    current,
                } => (None, slot, word, current),
            };
            let flags = decide(key, current)?;
            // An update carries the old version's frequency (one access more) to the new one.
            let hints = match (&self.policy, current) {
                (Some(_), Some(r)) => cache::carried(r.life.hints()),
                _ => 0,
            };
            let index = self.global_index.take();
            let meta = Meta {
                modify_index: index,
                create_index: current.map_or(index, |r| r.header.meta.create_index),
                flags,
            };
            match parts.take() {
                Some((key, value)) => {
                    let life = Life::new(deadline, hints);
                    node.word = Record::word(cell::hash_tag(hash), key, value, meta, life, bits)
                }
                // SAFETY: `node` is ours and unpublished: nobody else can see it.
                None => unsafe {
                    let record = &mut *cell::node_of::<Record<K, V>>(node.word);
                    record.header.meta = meta;
                    record.life.set_hints(hints);
                },
            }
            let installed = if let Some(table) = vacant {
                match self.raw.claim(table, slot, node.word) {
                    Claim::Claimed => true,
                    Claim::Lost => false,
                    Claim::Resizing => {
                        self.raw.help_resize(table, 1, &guard);
                        false
                    }
                }
            } else {
                slot.replace(word, node.word) == Cas::Won
            };
            if !installed {
                // Look again, decide again, restamp the same record; the index is a gap.
                self.global_index.skip(index);
                continue;
            }
            let installed = node.publish();
            // SAFETY: the word we replaced is unreachable from the slot now; retired once, by
            // the writer whose CAS replaced it.
            unsafe { cell::retire::<K, V>(word, &guard) };
            let ticket = self.journal.as_ref().map(|journal| {
                let _settle = Settling::new(slot, installed);
                // SAFETY: `installed` is the record we just published; only we may replace it
                // (it is settling), so it is live while we are pinned.
                let record = unsafe { Raw::<K, V>::record(installed, &guard) };
                journal.record(Mutation::Set {
                    key: &record.header.keyed.key,
                    entry: EntryRef::of(record),
                })
            });
            {
                // SAFETY: `installed` is the record we published, live while we are pinned.
                let record = unsafe { Raw::<K, V>::record(installed, &guard) };
                let key = &record.header.keyed.key;
                self.changed(index, || Mutation::Set {
                    key,
                    entry: EntryRef::of(record),
                });
                self.waiters.wake(key, || hash);
            }
            if let Some(policy) = &self.policy {
                // SAFETY: `installed` is the record we published, live while we are pinned.
                let new = unsafe { Raw::<K, V>::record(installed, &guard) };
                match current {
                    None => policy.admit(self, hash, new, &guard),
                    Some(old) => policy.reweigh(self, hash, old, new, &guard),
                }
            }
            return Ok(Written { index, ticket });
        }
    }

    /// The write path of every single-key removal: `decide` returns whether to remove (a
    /// present key) or the error to report. Returns the index of the delete, or `None` when
    /// the key was absent and `decide` accepted that.
    pub(crate) fn remove<Q, E>(
        &self,
        key: &Q,
        mut decide: impl FnMut(Option<&Record<K, V>>) -> Result<bool, E>,
    ) -> Result<Option<Written>, E>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let guard = self.raw.pin();
        let hash = self.raw.hash(key);
        let mut backoff = Backoff::new();
        let bits = if self.journal.is_some() { UNLOGGED } else { 0 };
        let mut tomb = Unpublished::<K, V>::new(cell::EMPTY);
        loop {
            let (slot, word, current) = match self.observe(hash, key, &guard, &mut backoff) {
                Step::Retry => continue,
                Step::Vacant { .. } => {
                    decide(None)?;
                    return Ok(None);
                }
                Step::Slot {
                    slot,
                    word,
                    current,
                } => (slot, word, current),
            };
            let Some(current) = current else {
                decide(None)?;
                return Ok(None);
            };
            if !decide(Some(current))? {
                return Ok(None);
            }
            // The owned key, from the record we replace (live for the pin).
            let key = &current.header.keyed.key;
            let index = self.global_index.take();
            if tomb.word == cell::EMPTY {
                tomb.word = Tomb::word(cell::hash_tag(hash), key.clone(), index, bits);
            } else {
                // SAFETY: `tomb` is ours and unpublished: nobody else can see it.
                unsafe {
                    (*cell::node_of::<Tomb<K>>(tomb.word))
                        .header
                        .meta
                        .modify_index = index
                };
            }
            if slot.replace(word, tomb.word) == Cas::Lost {
                self.global_index.skip(index); // a gap: the tomb is restamped next time
                continue;
            }
            let installed = tomb.publish();
            // SAFETY: the record we replaced is unreachable from the slot now; retired once.
            unsafe { cell::retire::<K, V>(word, &guard) };
            let ticket = self.journal.as_ref().map(|journal| {
                let _settle = Settling::new(slot, installed);
                journal.record(Mutation::Delete { key, index })
            });
            self.changed(index, || Mutation::Delete { key, index });
            self.waiters.wake(key, || hash);
            if let Some(policy) = &self.policy {
                policy.forget(hash, current);
            }
            return Ok(Some(Written { index, ticket }));
        }
    }
}

/// Flags to write: the given ones, else the current version's, else 0.
pub(crate) fn flags_or_kept<K, V>(given: Option<u64>, current: Option<&Record<K, V>>) -> u64 {
    given.unwrap_or_else(|| current.map_or(0, |r| r.header.meta.flags))
}

/// The index condition of `set_cas`/`delete_cas`/`check_index`: 0 means absent, N means
/// present at `modify_index` N.
pub(crate) fn check_index<K: Clone, V: Clone>(
    key: &K,
    expected: u64,
    current: Option<&Record<K, V>>,
) -> Result<(), Error<K, V>> {
    match (expected, current) {
        (0, None) => Ok(()),
        (n, Some(r)) if n != 0 && r.header.meta.modify_index == n => Ok(()),
        (_, None) => Err(Error::NotFound(key.clone())),
        (_, Some(r)) => Err(Error::Conflict(Conflict {
            key: key.clone(),
            expected: Expected::Index(expected),
            current: Some(Entry::of(r)),
        })),
    }
}

/// The value condition of `compare_and_set`: `None` matches absent.
pub(crate) fn value_matches<K, V: PartialEq>(
    expected: Option<&V>,
    current: Option<&Record<K, V>>,
) -> bool {
    match (expected, current) {
        (None, None) => true,
        (Some(e), Some(r)) => *e == r.value,
        _ => false,
    }
}
