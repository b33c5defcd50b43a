//! The public [`Store`]: single-key operations over the map of version cells.

use std::borrow::Borrow;
use std::convert::Infallible;
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Duration;

use crate::cache::{Bound, Flights, Landing, Listener, Policy, RemovalCause, Role, Weigher};
use crate::cell::Record;
use crate::engine::{check_index, flags_or_kept, value_matches, Config, Engine};
use crate::entry::{Entry, EntryRef};
use crate::error::{Conflict, Error, Expected};
use crate::global_index::GlobalIndex;
use crate::journal::{Journal, Written};
use crate::sync::epoch::Guard;
use crate::sync::{AtomicBool, StdArc};
use crate::table::Raw;
use crate::watch::{
    Change, Compacted, Feed, FeedEvent, HistoryLimits, Listing, Observer, PrefixWatch, Reporter,
    Seen, Skips, Waiters, Watch,
};

/// A concurrent versioned key-value store. See the [crate docs](crate) for the consistency model.
///
/// Keys need `Hash + Eq + Ord + Clone` (`Ord` gives batches their one global lock order and
/// listings their order). Values are stored **inline**, next to their key and indices, in one
/// allocation per version; [`get`](Store::get) hands out a clone of the value (as moka and
/// scc do) and [`get_with`](Store::get_with) or [`Pinned::get`] borrow it without copying. For
/// values that are expensive to clone, store an `Arc<T>`. Keys and values must be
/// `Send + 'static` because a replaced version is dropped later by the epoch collector,
/// possibly on another thread and after the store itself is gone.
///
/// # Example
/// ```
/// use caskv::Store;
/// let store: Store<String, String> = Store::new();
/// let created = store.set_cas("lock".into(), "owner-1".to_string(), 0).unwrap(); // create-only
/// assert!(store.set_cas("lock".into(), "owner-2".to_string(), 0).unwrap_err().is_conflict());
/// store.delete_cas("lock", created).unwrap();
/// assert!(store.get("lock").is_none());
/// ```
pub struct Store<K, V> {
    /// The table, the index, the settings and the journal, with the write paths that change
    /// a cell (`engine.rs`).
    pub(crate) engine: Engine<K, V>,
    /// Loads in flight ([`Store::get_or_insert_with`]).
    flights: Flights<K, V>,
    /// The store's own history ([`StoreBuilder::history`]), read by [`Store::changes`].
    history: Option<StdArc<Feed<Change<K, V>>>>,
}

/// A feed as a store reports to it (`Observer`) and as its index does (`Skips`): one object.
type FeedLink<K, V> = (StdArc<dyn Observer<K, V>>, StdArc<dyn Skips>);

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
pub struct StoreBuilder<K, V> {
    config: Config,
    global_index: Option<StdArc<GlobalIndex>>,
    /// The bound, if any: entries, or weight (with `weigher`).
    bound: Option<u64>,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    /// The feed to report to, as the store sees it and as its index does (one object).
    feed: Option<FeedLink<K, V>>,
    /// The feed of [`StoreBuilder::history`], kept for [`Store::changes`].
    history: Option<StdArc<Feed<Change<K, V>>>>,
    /// The store's types, fixed by [`Store::builder`] (`fn` so the builder is `Send` and
    /// `Sync` whatever they are).
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Default for StoreBuilder<K, V> {
    fn default() -> Self {
        StoreBuilder {
            config: Config::default(),
            global_index: None,
            bound: None,
            weigher: None,
            listener: None,
            feed: None,
            history: None,
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for StoreBuilder<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("config", &self.config)
            .field("global_index", &self.global_index)
            .field("bound", &self.bound)
            .field("weighted", &self.weigher.is_some())
            .field("listener", &self.listener.is_some())
            .field("feed", &self.feed.is_some())
            .finish()
    }
}

impl<K, V> StoreBuilder<K, V> {
    /// The most operations one batch may hold. Default [`defaults::MAX_BATCH`](crate::defaults::MAX_BATCH) (1000).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.config.max_batch = max;
        self
    }

    /// Room for `keys` keys before the table first grows. Default 0 (a small table that
    /// grows by doubling, copying its slots: no key or value is cloned).
    pub fn capacity(mut self, keys: usize) -> Self {
        self.config.capacity = keys;
        self
    }

    /// The global index to draw from, shared with other stores or the service registry.
    /// Default: a fresh counter starting at 1.
    pub fn global_index(mut self, index: StdArc<GlobalIndex>) -> Self {
        self.global_index = Some(index);
        self
    }

    /// Start a fresh counter above `high_water` (a restart). Default 0.
    ///
    /// # Panics
    /// If `high_water >= GlobalIndex::LIMIT` (2^63); see [`GlobalIndex::try_starting_after`].
    pub fn start_after(mut self, high_water: u64) -> Self {
        self.global_index = Some(StdArc::new(GlobalIndex::starting_after(high_water)));
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

    /// The time to live of every write that names none (a plain `set`, a batch's sets, …):
    /// each such version expires `ttl` after it was written. Default: none (such writes never
    /// expire). A zero `ttl` means none. See [`Store::set_with_ttl`].
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = (!ttl.is_zero()).then_some(ttl);
        self
    }

    /// Makes the store a cache of at most `n` entries: a write that would make more evicts
    /// others, chosen by an S3-FIFO policy (keys read since they came in stay; keys written
    /// once and never read go first, so a scan of one-time keys does not flush the ones read
    /// often; a recently evicted key comes back to the main queue only if a TinyLFU frequency
    /// sketch saw it more often than what it would push out, so a loop larger than the bound
    /// keeps a stable part of it). An eviction is a delete at a fresh index, journaled like any
    /// other, and told to the [`eviction_listener`](StoreBuilder::eviction_listener).
    ///
    /// The bound is strict: at no moment does the store hold more than `n` entries plus what
    /// the threads writing at that moment have made visible and not yet made room for (one
    /// key for a single-key write, the new keys of a batch for a batch: an entry becomes
    /// visible just before its writer makes room). An eviction passes over keys being
    /// written at that moment (a batch's locked keys, a resize's frozen slots); if every
    /// candidate is, the excess stays until the next write of a new key to that part of the
    /// store (the policy is split in shards, each with its part of the bound).
    ///
    /// Reads stay lock-free. A hit writes the entry's frequency hint (2 bits in its record,
    /// with a plain store, and only while it is below its maximum) and every read adds one to
    /// a counter on a cache line of its own thread ([`Store::cache_stats`]): one atomic
    /// read-modify-write per read, which an unbounded store does not make. Replaces a
    /// [`max_weight`](StoreBuilder::max_weight).
    ///
    /// ```
    /// use caskv::Store;
    /// let cache: Store<u64, String> = Store::builder().max_entries(1_000).build();
    /// for i in 0..10_000 {
    ///     cache.set(i, i.to_string());
    /// }
    /// assert!(cache.len() <= 1_000);
    /// ```
    pub fn max_entries(mut self, n: u64) -> Self {
        self.bound = Some(n);
        self.weigher = None;
        self
    }

    /// Makes the store a cache whose entries weigh at most `total` together, each weighing
    /// what `weigher` says (it must give the same answer for the same key and value; it runs
    /// once when an entry comes in or changes and once when it goes). As
    /// [`max_entries`](StoreBuilder::max_entries) otherwise (an entry heavier than its shard's
    /// part of the bound is evicted as soon as it is written). Replaces a `max_entries`.
    /// The weigher runs while a part of the policy is locked: it must not write to this
    /// store (that could wait on the same lock). So do, during an eviction, the keys' `Hash`
    /// and `Eq`, their `Clone` for an eviction listener, and a persistent store's codec.
    ///
    /// ```
    /// use caskv::Store;
    /// let cache: Store<String, Vec<u8>> = Store::builder()
    ///     .max_weight(1 << 20, |k: &String, v: &Vec<u8>| (k.len() + v.len()) as u32)
    ///     .build();
    /// cache.set("a".into(), vec![0; 1000]);
    /// ```
    pub fn max_weight(
        mut self,
        total: u64,
        weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.bound = Some(total);
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Calls `listener` with the key, the version and the cause of every entry the store
    /// deletes on its own: evicted to keep the bound ([`RemovalCause::Capacity`]), or deleted
    /// because its time to live ran out ([`RemovalCause::Expired`]; an expired entry is
    /// reported when its delete is made: by the next write that meets it, by
    /// [`Store::purge_expired`], or by the policy; a read only sees it as absent).
    ///
    /// The listener runs on the thread that made the removal (a writer, or a purge), once
    /// that thread let go of every lock it held, before the call that made the removal
    /// returns; so it may read and write this store. Each removal is reported once, with the
    /// version that was deleted (its `modify_index` is the deleted version's; the delete has
    /// an index of its own, as every delete does). A listener that panics: the removal stands,
    /// the other removals are still reported, and the panic resumes in the caller.
    ///
    /// ```
    /// use caskv::{RemovalCause, Store};
    /// use std::sync::{Arc, Mutex};
    /// let evicted = Arc::new(Mutex::new(Vec::new()));
    /// let seen = evicted.clone();
    /// let cache: Store<u32, String> = Store::builder()
    ///     .max_entries(1)
    ///     .eviction_listener(move |key, entry, cause| {
    ///         seen.lock().unwrap().push((key, entry.value, cause));
    ///     })
    ///     .build();
    /// cache.set(1, "one".into());
    /// cache.set(2, "two".into()); // over the bound: one of the two goes
    /// assert_eq!(evicted.lock().unwrap().len(), 1);
    /// assert_eq!(evicted.lock().unwrap()[0].2, RemovalCause::Capacity);
    /// ```
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(K, Entry<V>, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Keeps a history of the store's committed mutations, read with [`Store::changes`]: gap-
    /// free and in index order, the last `limits.max_changes` of them (and no more than
    /// `limits.max_bytes` by [`Change`]'s inline size). Each write then also clones its key and
    /// value into the history; without it, writes keep nothing.
    ///
    /// The store's [`GlobalIndex`] gets this feed: stores that share the index report their
    /// indices to it too (as gaps, since their changes are not of this type). Build the store
    /// before any store on the same index writes (see [`build`](StoreBuilder::build)).
    ///
    /// ```
    /// use caskv::{HistoryLimits, Store};
    /// let store: Store<String, u32> = Store::builder().history(HistoryLimits::default()).build();
    /// let a = store.set("a".into(), 1);
    /// store.set("b".into(), 2);
    /// let after_a = store.changes(a).unwrap();
    /// assert_eq!(after_a.len(), 1);
    /// assert_eq!(after_a[0].index(), a + 1);
    /// ```
    pub fn history(mut self, limits: HistoryLimits) -> Self
    where
        K: Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let feed = Feed::<Change<K, V>>::new(limits);
        self = self.feed(feed.clone(), |change| change);
        self.history = Some(feed);
        self
    }

    /// Reports the store's committed mutations to `feed`, each [`Change`] made an `E` by
    /// `into`. Stores that share the [`GlobalIndex`] may report to the same feed (each with
    /// its own `into`): one gap-free history of them all, read with [`Feed::read`]. Replaces a
    /// [`history`](StoreBuilder::history). A store on the index that reports to no feed leaves
    /// gaps in it (its indices are skipped), never holes.
    ///
    /// ```
    /// use caskv::{Change, Feed, FeedEvent, GlobalIndex, HistoryLimits, Store};
    /// use std::sync::Arc;
    /// #[derive(Debug)]
    /// enum Event { Name(Change<String, String>), Count(Change<String, u64>) }
    /// impl FeedEvent for Event {
    ///     fn index(&self) -> u64 { match self { Event::Name(c) => c.index(), Event::Count(c) => c.index() } }
    ///     fn weight(&self) -> usize { 64 }
    /// }
    /// let index = Arc::new(GlobalIndex::new());
    /// let feed = Feed::<Event>::new(HistoryLimits::default());
    /// let names: Store<String, String> =
    ///     Store::builder().global_index(index.clone()).feed(feed.clone(), Event::Name).build();
    /// let counts: Store<String, u64> =
    ///     Store::builder().global_index(index).feed(feed.clone(), Event::Count).build();
    /// names.set("n".into(), "x".into());
    /// counts.set("c".into(), 1);
    /// let events = feed.read(0, 10).unwrap();
    /// assert!(matches!(&*events[0], Event::Name(_)) && matches!(&*events[1], Event::Count(_)));
    /// ```
    pub fn feed<E: FeedEvent>(mut self, feed: StdArc<Feed<E>>, into: fn(Change<K, V>) -> E) -> Self
    where
        K: Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let reporter = Reporter {
            feed: feed.clone(),
            into,
        };
        self.feed = Some((StdArc::new(reporter), feed));
        self.history = None;
        self
    }

    /// The clock deadlines are read against. Default [`SystemClock`](crate::SystemClock);
    /// tests drive a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: StdArc<dyn crate::Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// Builds the store.
    ///
    /// # Panics
    /// With a [`history`](StoreBuilder::history) or a [`feed`](StoreBuilder::feed), if the
    /// store's [`GlobalIndex`] already has a different feed (an index has at most one). A
    /// feed starts after the index's high-water mark at this call: build the store before any
    /// store on the same index writes, or a write in flight may leave the feed waiting for it.
    pub fn build(self) -> Store<K, V>
    where
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
    {
        let global_index: StdArc<GlobalIndex> = self.global_index.unwrap_or_default();
        let feed = self.feed.map(|(observer, skips)| {
            let Some(start) = global_index.attach_feed(skips.clone()) else {
                panic!("caskv: this GlobalIndex already has a different feed (one per index)");
            };
            skips.start_after(start);
            observer
        });
        Store {
            engine: Engine {
                raw: Raw::with_capacity(self.config.capacity),
                global_index,
                config: self.config,
                journal: None,
                has_deadlines: AtomicBool::new(false),
                policy: self.bound.map(|total| {
                    let bound = match self.weigher {
                        None => Bound::Entries(total),
                        Some(weigher) => Bound::Weight(total, weigher),
                    };
                    Policy::new(bound, policy_shards())
                }),
                listener: self.listener,
                feed,
                waiters: Waiters::new(),
            },
            flights: Flights::new(),
            history: self.history,
        }
    }

    /// Builds a store that hands every committed mutation to `journal`, in per-key order
    /// (see [`Journal`]). Writers of a key wait while its previous mutation is being recorded,
    /// so single-key writes are no longer lock-free; reads still never wait.
    pub fn build_journaled(self, journal: Box<dyn Journal<K, V>>) -> Store<K, V>
    where
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
    {
        let mut store = self.build();
        store.engine.journal = Some(journal);
        store
    }
}

/// The eviction policy's shards: four per core, as many as writers may hit at once.
fn policy_shards() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 4)
}

/// A pinned read handle: many reads under one pin, each touching no shared memory and making
/// no atomic read-modify-write (on a bounded store, a read also counts itself and bumps the
/// entry's frequency hint: see [`StoreBuilder::max_entries`]).
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
    guard: Guard,
}

impl<K, V> Store<K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// An empty store with the default configuration.
    pub fn new() -> Self {
        StoreBuilder::default().build()
    }

    /// An empty store with room for `keys` keys before its table first grows.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<u64, u64> = Store::with_capacity(1 << 20);
    /// store.set(1, 10);
    /// assert_eq!(store.get(&1).unwrap().value, 10);
    /// ```
    pub fn with_capacity(keys: usize) -> Self {
        StoreBuilder::default().capacity(keys).build()
    }

    /// How many keys the store's current table holds before it grows: half its slots. Keys
    /// deleted since the last resize still count (a delete leaves a tomb in the key's slot, and
    /// the next resize drops it, growing the table only for the keys still present).
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<u64, u64> = Store::with_capacity(1000);
    /// assert!(store.capacity() >= 1000);
    /// ```
    pub fn capacity(&self) -> usize {
        let guard = self.engine.raw.pin();
        self.engine.raw.table(&guard).capacity() / 2
    }

    /// The global index this store draws from.
    pub fn global_index(&self) -> &StdArc<GlobalIndex> {
        &self.engine.global_index
    }

    /// Pins the current thread for a series of reads (see [`Pinned`]).
    pub fn pin(&self) -> Pinned<'_, K, V> {
        Pinned {
            store: self,
            guard: self.engine.raw.pin(),
        }
    }

    /// The key's current entry (the value cloned), or `None`. Lock-free; never waits for a
    /// writer; no atomic read-modify-write (the epoch pin is a plain store to this thread's
    /// own word; a bounded store adds one per read to its statistics, see
    /// [`StoreBuilder::max_entries`]).
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<&str, &str> = Store::new();
    /// store.set("k", "v");
    /// assert_eq!(store.get("k").unwrap().value, "v");
    /// ```
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let guard = self.engine.raw.pin();
        self.engine.read(key, &guard).map(Entry::of)
    }

    /// Calls `f` with the key's current entry, borrowed (nothing is cloned), and returns what
    /// it returns; `None` if the key is absent.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<&str, Vec<u8>> = Store::new();
    /// store.set("k", vec![1, 2, 3]);
    /// assert_eq!(store.get_with("k", |e| e.value.len()), Some(3));
    /// ```
    #[inline]
    pub fn get_with<Q, R>(&self, key: &Q, f: impl FnOnce(EntryRef<'_, V>) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let guard = self.engine.raw.pin();
        self.engine.read(key, &guard).map(|r| f(EntryRef::of(r)))
    }

    /// Whether the key is present.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let guard = self.engine.raw.pin();
        self.engine.read(key, &guard).is_some()
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
    pub fn set(&self, key: K, value: V) -> u64 {
        self.write_set(key, value, None, None).index
    }

    /// Sets the key and its flags. Returns the new `modify_index`.
    pub fn set_with_flags(&self, key: K, value: V, flags: u64) -> u64 {
        self.write_set(key, value, Some(flags), None).index
    }

    /// Sets the key (keeping its flags) with a time to live: from `ttl` after now the key reads
    /// as absent, and the first write that meets it, or [`purge_expired`](Store::purge_expired),
    /// deletes it at a fresh index. A zero `ttl` means the version never expires. Every write
    /// sets its version's TTL afresh: one that names none gets the store's
    /// [`default_ttl`](StoreBuilder::default_ttl), or none.
    ///
    /// ```
    /// # use caskv::Store;
    /// use std::time::Duration;
    /// let store: Store<&str, &str> = Store::new();
    /// store.set_with_ttl("token", "t-1", Duration::from_secs(60));
    /// assert!(store.get("token").unwrap().expires_at().is_some());
    /// ```
    pub fn set_with_ttl(&self, key: K, value: V, ttl: Duration) -> u64 {
        self.write_set(key, value, None, Some(ttl)).index
    }

    /// Compare-and-set on the index: `expected == 0` creates only if absent; `expected == N`
    /// updates only if the key's `modify_index` is N. Keeps existing flags.
    ///
    /// Fails with [`Error::Conflict`] (with the current entry) or, for N ≥ 1 on an absent key,
    /// [`Error::NotFound`]. A call whose condition fails at its first look allocates nothing and
    /// takes no index; one that first passes, loses a race to another writer and then fails has
    /// consumed an index (a gap in the sequence, never a reuse).
    pub fn set_cas(&self, key: K, value: V, expected: u64) -> Result<u64, Error<K, V>> {
        Ok(self.write_set_cas(key, value, expected, None, None)?.index)
    }

    /// [`set_cas`](Store::set_cas) with a time to live, as in
    /// [`set_with_ttl`](Store::set_with_ttl). An expired key is absent: `expected == 0`
    /// creates it again.
    ///
    /// ```
    /// # use caskv::Store;
    /// use std::time::Duration;
    /// let store: Store<&str, &str> = Store::new();
    /// let lease = store.set_cas_with_ttl("leader", "node-1", 0, Duration::from_secs(10)).unwrap();
    /// store.set_cas_with_ttl("leader", "node-1", lease, Duration::from_secs(10)).unwrap(); // renew
    /// ```
    pub fn set_cas_with_ttl(
        &self,
        key: K,
        value: V,
        expected: u64,
        ttl: Duration,
    ) -> Result<u64, Error<K, V>> {
        Ok(self
            .write_set_cas(key, value, expected, None, Some(ttl))?
            .index)
    }

    /// [`set_cas`](Store::set_cas) that also sets the flags.
    pub fn set_cas_with_flags(
        &self,
        key: K,
        value: V,
        expected: u64,
        flags: u64,
    ) -> Result<u64, Error<K, V>> {
        Ok(self
            .write_set_cas(key, value, expected, Some(flags), None)?
            .index)
    }

    /// Deletes the key. Returns the index the delete took; [`Error::NotFound`] if absent.
    ///
    /// Takes any borrowed form of the key, as `get` does:
    /// ```
    /// # use caskv::Store;
    /// let store: Store<String, u32> = Store::new();
    /// store.set("k".to_string(), 1);
    /// assert!(store.delete("k").is_ok());
    /// assert!(store.delete("k").unwrap_err().is_not_found());
    /// ```
    pub fn delete<Q>(&self, key: &Q) -> Result<u64, Error<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        Ok(self.write_delete(key, None)?.index)
    }

    /// Deletes the key only if its `modify_index` is `expected` (≥ 1).
    pub fn delete_cas<Q>(&self, key: &Q, expected: u64) -> Result<u64, Error<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
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
    /// assert_eq!(err.conflict().unwrap().current.as_ref().unwrap().value, "a");
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
        value: V,
        flags: Option<u64>,
        ttl: Option<Duration>,
    ) -> Written {
        let deadline = self.engine.deadline(ttl);
        match self.engine.put(key, value, deadline, |_, current| {
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
        value: V,
        expected: u64,
        flags: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<Written, Error<K, V>> {
        let deadline = self.engine.deadline(ttl);
        self.engine.put(key, value, deadline, |key, current| {
            check_index(key, expected, current)?;
            Ok(flags_or_kept(flags, current))
        })
    }

    /// `delete` (`expected: None`) and `delete_cas` with the journal ticket.
    /// The key is owned (for an error) only when it is absent: a present key's record has it.
    pub(crate) fn write_delete<Q>(
        &self,
        key: &Q,
        expected: Option<u64>,
    ) -> Result<Written, Error<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if expected == Some(0) {
            return Err(Error::CreateOnlyDelete(key.to_owned()));
        }
        let removed = self
            .engine
            .remove(key, |current| match (expected, current) {
                (Some(n), Some(r)) => check_index(&r.header.keyed.key, n, current).map(|()| true),
                (None, Some(_)) => Ok(true),
                (_, None) => Err(Error::NotFound(key.to_owned())),
            })?;
        removed.ok_or_else(|| Error::NotFound(key.to_owned()))
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
        let check = |key: &K, current: Option<&Record<K, V>>| -> Result<(), Error<K, V>> {
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
                .engine
                .put(key, value, self.engine.deadline(None), |key, current| {
                    check(key, current)?;
                    Ok(flags_or_kept(None, current))
                })
                .map(Some),
            None => self.engine.remove(&key, |current| {
                check(&key, current)?;
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
    /// assert_eq!(store.get("hits").unwrap().value, 2);
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
        let (first, max) = self.engine.config.update_backoff;
        let mut pause = first;
        for attempt in 1..=self.engine.config.update_attempts {
            let current = self.get(&key);
            let new = f(current.as_ref().map(|e| &e.value));
            check(&key, &new)?;
            let expected = current.map_or(0, |e| e.modify_index);
            match self.write_set_cas(key.clone(), new, expected, None, None) {
                Ok(written) => return Ok(written),
                Err(e) if e.is_conflict() || e.is_not_found() => {
                    if attempt < self.engine.config.update_attempts {
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
            attempts: self.engine.config.update_attempts,
        })
    }

    /// The keys present, sorted. Weakly consistent: a key written or deleted during the call
    /// may or may not appear, but every key present throughout the call does.
    pub fn keys(&self) -> Vec<K> {
        self.keys_where(|_| true)
    }

    /// The keys present that satisfy `filter`, sorted (weakly consistent, as [`keys`](Store::keys)).
    pub fn keys_where(&self, mut filter: impl FnMut(&K) -> bool) -> Vec<K> {
        let guard = self.engine.raw.pin();
        let mut keys = Vec::new();
        self.engine.raw.for_each(&guard, |k, _, word| {
            // SAFETY: `word` was loaded from a slot under `guard`.
            if filter(k) && unsafe { self.engine.resolve(word, &guard) }.is_some() {
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
        let guard = self.engine.raw.pin();
        let mut out = Vec::new();
        self.engine.raw.for_each(&guard, |k, _, word| {
            // SAFETY: `word` was loaded from a slot under `guard`.
            if let Some(r) = unsafe { self.engine.resolve(word, &guard) } {
                out.push((k.clone(), Entry::of(r)));
            }
        });
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The number of keys present. Counts by a scan (O(capacity)) and is weakly consistent.
    pub fn len(&self) -> usize {
        let guard = self.engine.raw.pin();
        let mut n = 0;
        self.engine.raw.for_each(&guard, |_, _, word| {
            // SAFETY: `word` was loaded from a slot under `guard`.
            if unsafe { self.engine.resolve(word, &guard) }.is_some() {
                n += 1;
            }
        });
        n
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key's entry, loading it with `load` when the key is absent: concurrent callers for
    /// the same absent key run one `load` (the first caller's) and all get what it made
    /// (single-flight, as moka's `get_with`). The value is written create-only, with the
    /// store's default TTL; if another writer made the key meanwhile, that entry is returned
    /// instead. `load` runs with no lock held (it may use the store). A `load` that panics
    /// unwinds out of its own caller; the callers waiting on it start over, and one of them
    /// loads with its own `load`.
    ///
    /// ```
    /// use caskv::Store;
    /// let cache: Store<u64, String> = Store::builder().max_entries(1_000).build();
    /// let first = cache.get_or_insert_with(7, || "seven".to_string());
    /// assert_eq!(first.value, "seven");
    /// let again = cache.get_or_insert_with(7, || unreachable!("present: not loaded again"));
    /// assert_eq!(again.modify_index, first.modify_index);
    /// ```
    pub fn get_or_insert_with(&self, key: K, load: impl FnOnce() -> V) -> Entry<V> {
        match self.try_get_or_insert_with(key, || Ok::<V, Infallible>(load())) {
            Ok(entry) => entry,
            Err(never) => match never {},
        }
    }

    /// [`get_or_insert_with`](Store::get_or_insert_with) with a `load` that may fail: its
    /// error goes to its own caller, nothing is written, and the callers waiting on it start
    /// over (one of them loads next, with its own `load`).
    ///
    /// ```
    /// use caskv::Store;
    /// let cache: Store<String, u64> = Store::new();
    /// let failed = cache.try_get_or_insert_with("n".into(), || "x".parse::<u64>());
    /// assert!(failed.is_err() && cache.get("n").is_none());
    /// let loaded = cache.try_get_or_insert_with("n".into(), || "42".parse::<u64>());
    /// assert_eq!(loaded.unwrap().value, 42);
    /// ```
    pub fn try_get_or_insert_with<E>(
        &self,
        key: K,
        load: impl FnOnce() -> Result<V, E>,
    ) -> Result<Entry<V>, E> {
        let mut load = Some(load);
        loop {
            if let Some(entry) = self.get(&key) {
                return Ok(entry);
            }
            let flight = match self.flights.join(&key, || self.peek(&key)) {
                Err(present) => return Ok(present),
                Ok(Role::Follow(flight)) => match flight.wait() {
                    Some(entry) => return Ok(entry),
                    None => continue, // the leader failed: start over
                },
                Ok(Role::Lead(flight)) => flight,
            };
            let landing = Landing {
                flights: &self.flights,
                key: &key,
                flight,
                landed: false,
            };
            // A caller leads at most once: it returns below whatever happens.
            let Some(load) = load.take() else {
                unreachable!("a caller that led has returned")
            };
            let value = load()?; // `landing` lands the flight as failed on the way out
            let entry = self.insert_loaded(key.clone(), value);
            landing.land(Some(entry.clone()));
            return Ok(entry);
        }
    }

    /// Writes a loaded value create-only; returns its entry, or the entry another writer made
    /// first.
    fn insert_loaded(&self, key: K, value: V) -> Entry<V> {
        let deadline = self.engine.deadline(None);
        let copy = value.clone();
        let written = self.engine.put(key, value, deadline, |key, current| {
            check_index(key, 0, current)?;
            Ok(0)
        });
        match written {
            Ok(w) => Entry::new(copy, 0, w.index, w.index, deadline),
            Err(Error::Conflict(Conflict {
                current: Some(current),
                ..
            })) => current,
            Err(_) => unreachable!("a create-only write fails only on a present key"),
        }
    }

    /// The key's entry without counting a hit or a miss (a bounded store's second look).
    fn peek(&self, key: &K) -> Option<Entry<V>> {
        let guard = self.engine.raw.pin();
        self.engine.find_live(key, &guard).map(Entry::of)
    }

    /// The weight of the entries a bounded store holds (their number under
    /// [`max_entries`](StoreBuilder::max_entries)), as its policy counts them: exact when no
    /// write is in flight. `None` for an unbounded store.
    ///
    /// ```
    /// # use caskv::Store;
    /// let cache: Store<u32, u32> = Store::builder().max_entries(2).build();
    /// for i in 0..5 { cache.set(i, i); }
    /// assert_eq!(cache.weight(), Some(2));
    /// assert_eq!(Store::<u32, u32>::new().weight(), None);
    /// ```
    pub fn weight(&self) -> Option<u64> {
        self.engine.policy.as_ref().map(|p| p.total())
    }

    /// What a bounded store has counted: hits, misses, inserts, evictions and expirations
    /// (see [`CacheStats`](crate::CacheStats)). `None` for an unbounded store, which counts
    /// nothing (its reads write no shared memory at all).
    pub fn cache_stats(&self) -> Option<crate::CacheStats> {
        self.engine.policy.as_ref().map(|p| p.counters.read())
    }

    /// Deletes every version whose time to live has run out, each at a fresh index (as the
    /// first write to meet it would); returns how many. Expired keys already read as absent:
    /// this frees their memory and gives their deletes an index, for a caller that sweeps
    /// periodically. Weakly consistent, as [`keys`](Store::keys).
    ///
    /// ```
    /// use caskv::{ManualClock, Store};
    /// use std::{sync::Arc, time::Duration};
    /// let clock = Arc::new(ManualClock::new(0));
    /// let store: Store<u32, u32> = Store::builder().clock(clock.clone()).build();
    /// store.set_with_ttl(1, 1, Duration::from_secs(1));
    /// store.set(2, 2);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(store.purge_expired(), 1);
    /// assert_eq!(store.keys(), [2]);
    /// ```
    pub fn purge_expired(&self) -> usize {
        self.engine.purge_expired()
    }

    /// The key's state with its index (see [`Seen`]): the entry and its `modify_index`, or for
    /// an absent key the index of the delete that removed it while the store remembers it,
    /// else the highest delete index the store forgot (0 if it never forgot one). What a blocking read answers with. An expired version found here is deleted
    /// first, at its own index.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<&str, u8> = Store::new();
    /// store.set("k", 1);
    /// let deleted = store.delete(&"k").unwrap();
    /// assert_eq!(store.state("k").index, deleted);
    /// assert!(store.state("k").entry.is_none());
    /// assert_eq!(store.state("never").index, 0);
    /// ```
    pub fn state<Q>(&self, key: &Q) -> Seen<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.engine.seen(key).0
    }

    /// The entries under `prefix`, sorted, with the highest index that affected the prefix
    /// among what the store remembers (versions, and deletes whose tombs the table still
    /// holds; a delete it forgot counts as the highest forgotten delete index): what a
    /// blocking listing answers with. Weakly consistent, as
    /// [`entries`](Store::entries).
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<String, u8> = Store::new();
    /// store.set("a/1".into(), 1);
    /// store.set("b/1".into(), 1);
    /// let deleted = store.delete("a/1").unwrap();
    /// let listing = store.listing("a/");
    /// assert!(listing.entries.is_empty());
    /// assert_eq!(listing.index, deleted);
    /// ```
    pub fn listing(&self, prefix: &str) -> Listing<K, V>
    where
        K: AsRef<str>,
    {
        let guard = self.engine.raw.pin();
        // A delete whose tomb a resize dropped may have been under the prefix.
        let mut index = self.engine.raw.forgotten();
        let mut entries = Vec::new();
        self.engine.raw.for_each(&guard, |k, _, word| {
            if !k.as_ref().starts_with(prefix) {
                return;
            }
            // SAFETY: `word` was loaded from a slot under `guard`.
            let (at, record) = unsafe { crate::cell::seen::<K, V>(word, &guard) };
            index = index.max(at);
            if let Some(r) = record.and_then(|r| self.engine.live(r)) {
                entries.push((k.clone(), Entry::of(r)));
            }
        });
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Listing { index, entries }
    }

    /// Watches `key` for changes after index `after` (see [`Watch`]); the watch keeps an
    /// owned copy of the key to look at it again.
    pub fn watch<Q>(&self, key: &Q, after: u64) -> Watch<'_, K, V>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + ?Sized,
    {
        Watch::new(self, key.to_owned(), after)
    }

    /// Watches every key that starts with `prefix` for changes after index `after` (see
    /// [`PrefixWatch`]).
    pub fn watch_prefix(&self, prefix: &str, after: u64) -> PrefixWatch<'_, K, V>
    where
        K: AsRef<str>,
    {
        PrefixWatch::new(self, prefix, after)
    }

    /// A registration that counts writes under `prefix` (for a follower of a change feed).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn wakeups(&self, prefix: &str) -> crate::watch::Wakeups<'_, K, V>
    where
        K: AsRef<str>,
    {
        crate::watch::Wakeups::new(self, prefix)
    }

    /// The watches registered now, and how many times a write woke one, ever.
    ///
    /// ```
    /// # use caskv::Store;
    /// let store: Store<String, u8> = Store::new();
    /// let _watch = store.watch("a", 0);
    /// store.set("b".into(), 1); // nobody watches "b"
    /// assert_eq!(store.watch_counts(), (1, 0));
    /// store.set("a".into(), 1);
    /// assert_eq!(store.watch_counts(), (1, 1));
    /// ```
    pub fn watch_counts(&self) -> (usize, u64) {
        self.engine.waiters.stats()
    }

    /// The committed mutations with an index above `after`, in index order and without gaps
    /// (a batch is one [`Change::Batch`] at its one index; expiries and evictions are deletes),
    /// from the history kept by [`StoreBuilder::history`]. The answer ends at the feed's
    /// watermark: the highest index below which every index handed out was applied or given
    /// up, so it is a prefix of the order in which readers see the mutations. An `after` at or
    /// above the watermark gets an empty answer.
    ///
    /// # Errors
    /// [`Compacted`] when the history no longer holds every change after `after`. A store
    /// without a history holds none: every `after` below the high-water mark is compacted.
    pub fn changes(&self, after: u64) -> Result<Vec<StdArc<Change<K, V>>>, Compacted>
    where
        K: Sync,
        V: Sync,
    {
        match &self.history {
            Some(feed) => feed.read(after, usize::MAX),
            None => {
                let oldest = self.engine.global_index.high_water();
                if after < oldest {
                    Err(Compacted { oldest })
                } else {
                    Ok(Vec::new())
                }
            }
        }
    }
}

impl<K, V> Store<K, V> {
    /// A builder for a configured store of these key and value types (written out, as in
    /// `Store::<u64, String>::builder()`, or inferred from where the store goes).
    ///
    /// ```
    /// let store = caskv::Store::<u64, String>::builder().capacity(1_000).build();
    /// store.set(1, "one".to_string());
    /// ```
    pub fn builder() -> StoreBuilder<K, V> {
        StoreBuilder::default()
    }
}

impl<K, V> Default for Store<K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> std::fmt::Debug for Store<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("high_water", &self.engine.global_index.high_water())
            .field("max_batch", &self.engine.config.max_batch)
            .finish_non_exhaustive()
    }
}

impl<K, V> Pinned<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// The key's current entry, borrowed: nothing is cloned and no shared memory is written.
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<EntryRef<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.store.engine.read(key, &self.guard).map(EntryRef::of)
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
        assert_eq!(store.get(&1).unwrap().value, "d");
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
    fn writes_and_batches_delete_expired_versions_first() {
        let clock = std::sync::Arc::new(crate::ManualClock::new(1_000));
        let store: Store<u32, String> = Store::builder().clock(clock.clone()).build();
        let a = store.set_with_ttl(1, "a".to_string(), Duration::from_millis(5));
        store.set_with_ttl(2, "b".to_string(), Duration::from_millis(5));
        store.set_with_ttl(3, "c".to_string(), Duration::from_millis(5));
        clock.advance(Duration::from_millis(5));
        assert!(store.get(&1).is_none());
        // A write meets the expired version: its delete first, then a new key.
        let again = store.set_cas(1, "a2".to_string(), 0).unwrap();
        assert!(again > a + 1);
        // A batch locks an expired version: deleted first, then the batch sees it absent.
        store
            .batch(vec![Op::check_index(2, 0), Op::set(4, "d".to_string())])
            .unwrap();
        assert_eq!(store.purge_expired(), 1);
        assert_eq!(store.keys(), [1, 4]);
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
