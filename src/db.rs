//! [`Db`]: the one write path, in memory or on disk.
//!
//! A `Db` is a [`Store`] (and, when asked for, a service [`Registry`] sharing its global index)
//! whose every write returns a [`Pending`]: ready at once in memory, and on disk resolved when
//! the log's flush covers the write under the [`FsyncPolicy`]. Wait for it with
//! [`Pending::wait`] from a thread, or `.await` it from async code (the log's flusher wakes it;
//! no runtime is needed). Before a write is applied, a `Db` on disk refuses it if the log has
//! failed ([`Error::Storage`]) or if its record would not fit the log
//! ([`Error::EntryTooLarge`]), so nothing a client sends can poison the log.
//!
//! The server, the registry's endpoints and the CLI write through this path only; reads go
//! straight to [`Db::store`] and [`Db::registry`].

use std::borrow::Borrow;
use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::journal::Written;
use crate::persist::record;
use crate::persist::{
    Codec, Durable, FsyncPolicy, Options, Pending, PersistError, RecoveryReport, SnapshotReport,
    MAX_BATCH_BYTES, MAX_ENTRY_BYTES,
};
use crate::watch::{Change, Compacted, Feed, FeedEvent};
use crate::{
    Error, GlobalIndex, Op, Registration, Registry, RegistryError, Service, StorageError, Store,
};

/// One committed change of a [`Db`]: of its KV store, or of its service registry, in the one
/// index order both share ([`Db::changes`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DbChange<K, V> {
    /// A change of the KV store.
    Kv(Change<K, V>),
    /// A change of the service registry (keyed by service name).
    Service(Change<String, Arc<Registration>>),
}

impl<K, V> DbChange<K, V> {
    /// The index the change was committed at.
    pub fn index(&self) -> u64 {
        match self {
            DbChange::Kv(c) => c.index(),
            DbChange::Service(c) => c.index(),
        }
    }
}

/// Weighs a change by the encoded size of its keys and values, plus a fixed 64 bytes per item.
impl<K, V> FeedEvent for DbChange<K, V>
where
    K: Codec + Send + Sync + 'static,
    V: Codec + Send + Sync + 'static,
{
    fn index(&self) -> u64 {
        DbChange::index(self)
    }

    fn weight(&self) -> usize {
        fn weigh<K: Codec, V: Codec>(c: &Change<K, V>) -> usize {
            let item =
                |k: &K, v: Option<&V>| 64 + k.encoded_len() + v.map_or(0, Codec::encoded_len);
            match c {
                Change::Set { key, entry } => item(key, Some(&entry.value)),
                Change::Delete { key, .. } => item(key, None),
                Change::Batch { writes, .. } => writes
                    .iter()
                    .map(|(k, e)| item(k, e.as_ref().map(|e| &e.value)))
                    .sum(),
            }
        }
        match self {
            DbChange::Kv(c) => weigh(c),
            DbChange::Service(c) => weigh(c),
        }
    }
}

/// A KV store (and optionally a service registry) with one write path for memory and disk.
///
/// - [`Db::memory`]: nothing is logged; every [`Pending`] is ready at once.
/// - [`Db::open`]: a data directory, recovered on open, every write logged (see
///   [`persist`](crate::persist) for the guarantees).
///
/// Reads go through [`store`](Db::store) and [`registry`](Db::registry). Writes go through the
/// methods here. Writes made directly through `store()` (or `registry()`) on disk are logged
/// too, in the same per-key order, but they bypass this path's checks (a failed log, the
/// [`MAX_ENTRY_BYTES`] bound: an oversized one fails the log for every later write) and nobody
/// can wait for them; the background thread flushes them within about a second.
///
/// # Example
/// ```
/// use caskv::persist::Options;
/// use caskv::Db;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let db: Db<String, String> = Db::memory(Options::default());
/// // From a thread: block until the write is acknowledged (at once in memory).
/// let first = db.set("k".into(), "v1".to_string())?.wait()?;
/// // From async code: await it; on disk the log's flusher wakes the task.
/// let second = db.set_cas("k".into(), "v2".to_string(), first)?.await?;
/// assert!(second > first);
/// assert_eq!(db.store().get("k").unwrap().value, "v2");
/// # Ok(())
/// # }
/// # let db: Db<String, String> = Db::memory(Options::default());
/// # let i = db.set("k".into(), "v".to_string()).unwrap().wait().unwrap();
/// # assert_eq!(db.store().get("k").unwrap().modify_index, i);
/// ```
pub struct Db<K, V> {
    store: Arc<Store<K, V>>,
    registry: Option<Arc<Registry>>,
    /// Every committed change of both, in index order.
    feed: Arc<Feed<DbChange<K, V>>>,
    /// The data directory: none in memory.
    durable: Option<Durable<K, V>>,
}

impl<K, V> Db<K, V>
where
    K: Codec + Hash + Eq + Ord + Clone + Send + Sync + 'static,
    V: Codec + Clone + Send + Sync + 'static,
{
    /// An in-memory database: the store's batch bound and the services setting come from
    /// `options` (the rest of them is about the disk).
    pub fn memory(options: Options) -> Self {
        let global_index = Arc::new(GlobalIndex::new());
        let feed = Feed::new(options.history_limits());
        let store = options
            .bound(Store::builder())
            .global_index(global_index.clone())
            .max_batch(options.batch_bound())
            .feed(feed.clone(), DbChange::Kv)
            .build();
        let registry = options.services_ttl().map(|ttl| {
            let services = Store::builder()
                .global_index(global_index)
                .feed(feed.clone(), DbChange::Service)
                .build();
            Arc::new(Registry::with_store(services, ttl, None))
        });
        Db {
            store: Arc::new(store),
            registry,
            feed,
            durable: None,
        }
    }

    /// Opens (creating if needed) the data directory `dir`: takes its lock, recovers the latest
    /// snapshot and the log after it, and starts a new log segment.
    ///
    /// Fails if another process has the directory open, if a file is corrupt (naming it and
    /// the offset), if it was written by a newer format, if it holds service registrations and
    /// `options` has services off, or on an I/O error.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self, PersistError> {
        let durable = Durable::open(dir.as_ref(), options)?;
        Ok(Db {
            store: durable.store().clone(),
            registry: durable.registry().cloned(),
            feed: durable.feed().clone(),
            durable: Some(durable),
        })
    }

    /// The KV store, for reads.
    pub fn store(&self) -> &Store<K, V> {
        &self.store
    }

    /// The service registry (for reads and heartbeats), when the options turned it on.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_deref()
    }

    /// The committed changes of the store and the registry with an index above `after`, in
    /// index order and without gaps (a batch is one change at its one index; expiries and
    /// evictions are deletes), at most `max` of them, up to the feed's watermark (every index
    /// at or below it was applied or given up). A persistent `Db`'s feed resumes, when it is
    /// opened, from the log segments after its last snapshot.
    ///
    /// # Errors
    /// [`Compacted`] when the history (see [`Options::history`]) no longer holds every change
    /// after `after` (or, on disk, `after` is older than the last snapshot).
    ///
    /// ```
    /// use caskv::persist::Options;
    /// use caskv::{Change, Db, DbChange};
    /// let db: Db<String, String> = Db::memory(Options::default().services(true));
    /// let set = db.set("k".into(), "v".into()).unwrap().wait().unwrap();
    /// let changes = db.changes(0, 10).unwrap();
    /// assert!(matches!(&*changes[0], DbChange::Kv(Change::Set { key, .. }) if key == "k"));
    /// assert_eq!(changes[0].index(), set);
    /// ```
    pub fn changes(&self, after: u64, max: usize) -> Result<Vec<Arc<DbChange<K, V>>>, Compacted> {
        self.feed.read(after, max)
    }

    /// The change feed itself (its watermark and oldest index).
    pub fn feed(&self) -> &Arc<Feed<DbChange<K, V>>> {
        &self.feed
    }

    /// Shared handles, for a server's read paths.
    #[cfg(feature = "server")]
    pub(crate) fn handles(&self) -> (Arc<Store<K, V>>, Option<Arc<Registry>>) {
        (self.store.clone(), self.registry.clone())
    }

    /// The data directory, on disk.
    pub fn dir(&self) -> Option<&Path> {
        self.durable.as_ref().map(Durable::dir)
    }

    /// The fsync policy, on disk.
    pub fn fsync_policy(&self) -> Option<FsyncPolicy> {
        self.durable.as_ref().map(Durable::policy)
    }

    /// What opening the data directory recovered, on disk.
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.durable.as_ref().map(Durable::recovery)
    }

    /// The log, for the tests that look at its waiters.
    #[cfg(test)]
    pub(crate) fn log(&self) -> &crate::persist::log::Log {
        self.durable.as_ref().expect("a Db on disk").log()
    }

    /// Refuses a write once the log has failed.
    fn check(&self) -> Result<(), StorageError> {
        match self.durable.as_ref().and_then(Durable::failure) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The encoded lengths of an entry's key and value, refused when together they pass
    /// [`MAX_ENTRY_BYTES`].
    fn entry_lens(key: &K, value: Option<&V>) -> Result<(usize, Option<usize>), Error<K, V>> {
        let (key, value) = (key.encoded_len(), value.map(Codec::encoded_len));
        let len = key + value.unwrap_or(0);
        if len > MAX_ENTRY_BYTES {
            return Err(Error::EntryTooLarge {
                len,
                max: MAX_ENTRY_BYTES,
            });
        }
        Ok((key, value))
    }

    /// On disk, refuses an entry one log record cannot hold; in memory nothing is logged.
    fn check_entry(&self, key: &K, value: Option<&V>) -> Result<(), Error<K, V>> {
        if self.durable.is_some() {
            Self::entry_lens(key, value)?;
        }
        Ok(())
    }

    /// The acknowledgement of a write that returned `value`, logged as `written` (none: it
    /// logged nothing).
    fn pending<T>(&self, value: T, written: Option<Written>) -> Pending<T> {
        match &self.durable {
            Some(d) => d.pending(value, written),
            None => Pending::ready(value),
        }
    }

    /// [`Store::set`] through the write path. Resolves to the new `modify_index`.
    pub fn set(&self, key: K, value: V) -> Result<Pending<u64>, Error<K, V>> {
        self.put(key, value, None, None, None)
    }

    /// [`Store::set_with_ttl`] through the write path (the log records the deadline).
    pub fn set_with_ttl(
        &self,
        key: K,
        value: V,
        ttl: Duration,
    ) -> Result<Pending<u64>, Error<K, V>> {
        self.put(key, value, None, None, Some(ttl))
    }

    /// [`Store::set_cas_with_ttl`] through the write path.
    pub fn set_cas_with_ttl(
        &self,
        key: K,
        value: V,
        expected: u64,
        ttl: Duration,
    ) -> Result<Pending<u64>, Error<K, V>> {
        self.put(key, value, Some(expected), None, Some(ttl))
    }

    /// [`Store::set_with_flags`] through the write path.
    pub fn set_with_flags(
        &self,
        key: K,
        value: V,
        flags: u64,
    ) -> Result<Pending<u64>, Error<K, V>> {
        self.put(key, value, None, Some(flags), None)
    }

    /// [`Store::set_cas`] through the write path.
    pub fn set_cas(&self, key: K, value: V, expected: u64) -> Result<Pending<u64>, Error<K, V>> {
        self.put(key, value, Some(expected), None, None)
    }

    /// [`Store::set_cas_with_flags`] through the write path.
    pub fn set_cas_with_flags(
        &self,
        key: K,
        value: V,
        expected: u64,
        flags: u64,
    ) -> Result<Pending<u64>, Error<K, V>> {
        self.put(key, value, Some(expected), Some(flags), None)
    }

    /// A set (`expected` none) or a CAS, keeping the flags unless `flags` gives new ones, with
    /// a time to live (`None`: the store's default TTL, if any): every form of `set` above,
    /// and the server's `PUT`, which takes all three as optional.
    pub fn put(
        &self,
        key: K,
        value: V,
        expected: Option<u64>,
        flags: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<Pending<u64>, Error<K, V>> {
        self.check()?;
        self.check_entry(&key, Some(&value))?;
        let w = match expected {
            None => self.store.write_set(key, value, flags, ttl),
            Some(expected) => self.store.write_set_cas(key, value, expected, flags, ttl)?,
        };
        Ok(self.pending(w.index, Some(w)))
    }

    /// [`Store::delete`] through the write path. (No size check: a key that was written fits
    /// the log, and an absent one logs nothing.)
    pub fn delete<Q>(&self, key: &Q) -> Result<Pending<u64>, Error<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove(key, None)
    }

    /// [`Store::delete_cas`] through the write path.
    pub fn delete_cas<Q>(&self, key: &Q, expected: u64) -> Result<Pending<u64>, Error<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove(key, Some(expected))
    }

    /// A delete, conditional on `expected` when given: both forms above, and the server's
    /// `DELETE`, which takes the index as optional.
    pub fn remove<Q>(&self, key: &Q, expected: Option<u64>) -> Result<Pending<u64>, Error<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.check()?;
        let w = self.store.write_delete(key, expected)?;
        Ok(self.pending(w.index, Some(w)))
    }

    /// [`Store::compare_and_set`] through the write path. Resolves to the new index, or to
    /// `None` when both sides were absent (nothing was written).
    pub fn compare_and_set(
        &self,
        key: K,
        expected: Option<&V>,
        new: Option<V>,
    ) -> Result<Pending<Option<u64>>, Error<K, V>>
    where
        V: PartialEq,
    {
        self.check()?;
        self.check_entry(&key, new.as_ref())?;
        let w = self.store.write_compare_and_set(key, expected, new)?;
        Ok(self.pending(w.map(|w| w.index), w))
    }

    /// [`Store::purge_expired`] through the write path (each expiry logged as the delete it
    /// is, not waited for).
    pub fn purge_expired(&self) -> Result<usize, Error<K, V>> {
        self.check()?;
        Ok(self.store.purge_expired())
    }

    /// [`Store::update`] through the write path. On disk each value `f` returns is checked
    /// against [`MAX_ENTRY_BYTES`] before it is written ([`Error::EntryTooLarge`]).
    pub fn update<F>(&self, key: K, f: F) -> Result<Pending<u64>, Error<K, V>>
    where
        F: FnMut(Option<&V>) -> V,
    {
        self.check()?;
        let w = self
            .store
            .write_update(key, f, |k, v| self.check_entry(k, Some(v)))?;
        Ok(self.pending(w.index, Some(w)))
    }

    /// [`Store::batch`] through the write path, logged as one record. On disk every entry is
    /// checked against [`MAX_ENTRY_BYTES`] and the whole record (its header and each item's
    /// own bytes included) against [`MAX_BATCH_BYTES`] before anything is applied.
    pub fn batch(&self, ops: Vec<Op<K, V>>) -> Result<Pending<u64>, Error<K, V>>
    where
        V: PartialEq,
    {
        self.check()?;
        if self.durable.is_some() {
            let mut total = record::BATCH_HEAD_LEN;
            // A batch's sets carry the store's default TTL, if it has one.
            let expiring = self.store.engine.config.default_ttl.is_some();
            for op in &ops {
                let value = match op {
                    Op::Set { value, .. } | Op::SetCas { value, .. } => Some(value),
                    Op::CompareAndSet { new, .. } => new.as_ref(),
                    _ => None,
                };
                let (key, value) = Self::entry_lens(op.key(), value)?;
                // As the record would hold it (a check that writes nothing counted as a
                // delete: an upper bound).
                total = total.saturating_add(record::batch_item_len(key, value, expiring));
            }
            if total > MAX_BATCH_BYTES {
                return Err(Error::EntryTooLarge {
                    len: total,
                    max: MAX_BATCH_BYTES,
                });
            }
        }
        let w = self.store.write_batch(ops)?;
        Ok(self.pending(w.index, Some(w)))
    }

    /// The registry, or the error a database without services answers.
    fn services(&self) -> Result<&Registry, RegistryError> {
        self.registry.as_deref().ok_or(Error::NoServices)
    }

    /// [`Registry::register`] through the write path ([`Error::NoServices`] without services).
    pub fn register(
        &self,
        service: Service,
        cas: Option<u64>,
    ) -> Result<Pending<u64>, RegistryError> {
        let registry = self.services()?;
        self.check()?;
        let w = registry.register_written(service, cas)?;
        Ok(self.pending(w.index, Some(w)))
    }

    /// [`Registry::deregister`] through the write path ([`Error::NoServices`] without services).
    pub fn deregister(&self, name: &str, cas: Option<u64>) -> Result<Pending<u64>, RegistryError> {
        let registry = self.services()?;
        self.check()?;
        let w = registry.deregister_written(name, cas)?;
        Ok(self.pending(w.index, Some(w)))
    }

    /// On disk, writes a snapshot now and drops the log it covers (writers keep going
    /// meanwhile); in memory there is nothing to snapshot and it returns `None`.
    pub fn snapshot(&self) -> Result<Option<SnapshotReport>, PersistError> {
        self.durable.as_ref().map(Durable::snapshot).transpose()
    }

    /// On disk, flushes and fsyncs everything logged so far, whatever the policy; in memory,
    /// nothing to do.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.durable.as_ref().map_or(Ok(()), Durable::sync)
    }

    /// The log's failure, once it failed (every later write is refused with it); none in
    /// memory.
    pub fn storage_failure(&self) -> Option<StorageError> {
        self.durable.as_ref().and_then(Durable::failure)
    }
}

impl<K, V> std::fmt::Debug for Db<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Db");
        match &self.durable {
            Some(durable) => d
                .field("dir", &durable.dir())
                .field("fsync", &durable.policy()),
            None => d.field("dir", &"(in memory)"),
        };
        d.field("services", &self.registry.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::Options;

    fn service(name: &str) -> Service {
        Service {
            name: name.into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta: Default::default(),
        }
    }

    #[test]
    fn in_memory_every_write_is_acknowledged_at_once_with_the_stores_answer() {
        let db: Db<String, String> = Db::memory(Options::default());
        assert!(db.dir().is_none() && db.fsync_policy().is_none() && db.recovery().is_none());
        let set = db.set("a".into(), "1".into()).unwrap();
        assert!(set.is_durable());
        let a = set.wait().unwrap();
        let b = db
            .set_cas("a".into(), "2".into(), a)
            .unwrap()
            .wait()
            .unwrap();
        assert!(b > a);
        let stale = db.set_cas("a".into(), "3".into(), a).unwrap_err();
        assert_eq!(stale.conflict().unwrap().current_index(), Some(b));
        let c = db
            .compare_and_set("a".into(), Some(&"2".to_string()), Some("4".into()))
            .unwrap()
            .wait()
            .unwrap();
        assert!(c > Some(b));
        let d = db
            .update("n".into(), |_| "0".into())
            .unwrap()
            .wait()
            .unwrap();
        let e = db
            .batch(vec![
                Op::set("x".into(), "y".into()),
                Op::delete("n".into()),
            ])
            .unwrap()
            .wait()
            .unwrap();
        assert!(e > d);
        assert!(db.store().get("n").is_none());
        assert!(db.delete("a").unwrap().wait().unwrap() > e);
        assert!(db.store().get("a").is_none());
        assert!(db.snapshot().unwrap().is_none());
        db.sync().unwrap();
        assert!(db.storage_failure().is_none());
    }

    #[test]
    fn services_are_opt_in() {
        let db: Db<String, String> = Db::memory(Options::default());
        assert!(db.registry().is_none());
        assert!(matches!(
            db.register(service("web"), None),
            Err(Error::NoServices)
        ));
        assert!(matches!(db.deregister("web", None), Err(Error::NoServices)));

        let db: Db<String, String> = Db::memory(Options::default().services(true));
        let at = db.register(service("web"), None).unwrap().wait().unwrap();
        // The registry and the store share one global index.
        let kv = db.set("k".into(), "v".into()).unwrap().wait().unwrap();
        assert!(kv > at);
        assert_eq!(db.registry().unwrap().get("web").unwrap().modify_index, at);
        assert!(db.deregister("web", Some(at)).unwrap().wait().unwrap() > kv);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "on disk: file-system heavy, as the persistence tests (ci/miri.sh)"
    )]
    fn a_directory_with_registrations_is_refused_without_services_and_kept_intact() {
        let dir = tempfile::tempdir().unwrap();
        let on = || Options::default().services(true);
        let at = {
            let db: Db<String, String> = Db::open(dir.path(), on()).unwrap();
            db.set("k".into(), "v".into()).unwrap().wait().unwrap();
            db.register(service("web"), None).unwrap().wait().unwrap()
        };
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let before = files();
        for _ in 0..2 {
            match Db::<String, String>::open(dir.path(), Options::default()) {
                Err(PersistError::ServicesOff { registrations, .. }) => {
                    assert_eq!(registrations, 1)
                }
                other => panic!("opened without services: {other:?}"),
            }
        }
        assert_eq!(files(), before, "a refused open wrote to the directory");
        let db: Db<String, String> = Db::open(dir.path(), on()).unwrap();
        assert_eq!(db.registry().unwrap().get("web").unwrap().modify_index, at);
        assert_eq!(db.store().get("k").unwrap().value, "v");
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "on disk: file-system heavy, as the persistence tests (ci/miri.sh)"
    )]
    fn a_directory_without_services_logs_and_snapshots_the_kv_space_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let db: Db<String, String> = Db::open(dir.path(), Options::default()).unwrap();
            assert!(db.registry().is_none());
            assert!(matches!(
                db.register(service("web"), None),
                Err(Error::NoServices)
            ));
            let a = db.set("a".into(), "1".into()).unwrap().wait().unwrap();
            assert!(db.snapshot().unwrap().is_some());
            let b = db.set("b".into(), "2".into()).unwrap().wait().unwrap();
            (a, b)
        };
        let db: Db<String, String> = Db::open(dir.path(), Options::default()).unwrap();
        assert_eq!(db.store().get("a").unwrap().modify_index, a);
        assert_eq!(db.store().get("b").unwrap().modify_index, b);
        assert!(db.recovery().unwrap().snapshot.is_some());
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "on disk: file-system heavy, as the persistence tests (ci/miri.sh)"
    )]
    fn an_oversized_entry_or_batch_is_refused_on_disk_before_it_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db: Db<String, Vec<u8>> = Db::open(dir.path(), Options::default()).unwrap();
        let big = vec![0u8; MAX_ENTRY_BYTES];
        let err = db.set("big".into(), big.clone()).unwrap_err();
        assert!(matches!(err, Error::EntryTooLarge { max, .. } if max == MAX_ENTRY_BYTES));
        let half = vec![0u8; MAX_ENTRY_BYTES / 2];
        let ops = (0..8)
            .map(|i| Op::set(format!("k{i}"), half.clone()))
            .collect();
        let err = db.batch(ops).unwrap_err();
        assert!(matches!(err, Error::EntryTooLarge { max, .. } if max == MAX_BATCH_BYTES));
        assert!(db.store().is_empty(), "nothing was applied");
        // Many small entries: under the bound by their keys and values alone, over it with
        // the record's own bytes per item (a log record the frame could not hold otherwise).
        let db_many: Db<String, std::sync::Arc<Vec<u8>>> = Db::open(
            dir.path().join("many"),
            Options::default().max_batch(200_000),
        )
        .unwrap();
        let value = std::sync::Arc::new(vec![7u8; 300]);
        let ops: Vec<_> = (0..200_000)
            .map(|i| Op::set(format!("{i:08}"), value.clone()))
            .collect();
        let bare: usize = 200_000 * (8 + 300);
        assert!(bare <= MAX_BATCH_BYTES);
        let err = db_many.batch(ops).unwrap_err();
        assert!(
            matches!(err, Error::EntryTooLarge { len, max } if len > max && max == MAX_BATCH_BYTES)
        );
        assert!(db_many.store().is_empty(), "nothing was applied");
        db_many.set("after".into(), value).unwrap().wait().unwrap();
        // The log is unharmed: the next write is acknowledged.
        db.set("small".into(), vec![1]).unwrap().wait().unwrap();
        // In memory nothing is logged, so there is no log bound to meet.
        let mem: Db<String, Vec<u8>> = Db::memory(Options::default());
        mem.set("big".into(), big).unwrap().wait().unwrap();
    }
}
