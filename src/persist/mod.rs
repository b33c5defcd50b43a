//! Persistence: the data directory behind a [`Db`](crate::Db) opened with [`Db::open`].
//!
//! [`Db::open`](crate::Db::open) recovers a data directory into memory and from then on hands
//! every committed mutation to a checksummed, append-only log through the store's
//! [`Journal`](crate::Journal) hook, in per-key memory order. Memory stays the source of truth
//! for reads. Snapshots compact the log in the background without stopping writers.
//!
//! # Guarantees
//! - A write whose [`Pending`] resolved to `Ok` (by [`Pending::wait`] or `.await`) survives a
//!   process crash under every [`FsyncPolicy`], and a power loss under [`FsyncPolicy::Always`]
//!   (see the policy's table).
//! - Recovery restores every key with its value, flags and both indices, and the state it
//!   restores is a prefix of the log: per key, exactly the mutations up to some point, in the
//!   order they were applied.
//! - The global index resumes above every index ever handed out, even one whose write was lost
//!   (indices are reserved durably in blocks before they are handed out), so an index is never
//!   reused, not even across a crash.
//! - A torn tail is truncated with a log line; any other damage stops `Db::open` with a
//!   [`PersistError`] naming the file and byte offset. A directory written by a newer format
//!   is refused.
//!
//! Reads can return a write that is not yet durable (as in Redis): a write is applied in memory
//! first and logged right after, and only its acknowledgement waits for the disk.
//!
//! # Example
//! ```
//! use caskv::persist::Options;
//! use caskv::Db;
//!
//! let dir = std::env::temp_dir().join(format!("caskv-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let db: Db<String, String> = Db::open(&dir, Options::default())?;
//! let index = db.set("greeting".into(), "hello".to_string())?.wait()?;
//! drop(db);
//!
//! let db: Db<String, String> = Db::open(&dir, Options::default())?;
//! let entry = db.store().get("greeting").unwrap();
//! assert_eq!((entry.value.as_str(), entry.modify_index), ("hello", index));
//! assert!(db.set("greeting".into(), "again".to_string())?.wait()? > index);
//! # drop(db);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod codec;
mod error;
pub(crate) mod frame;
mod journal;
pub(crate) mod log;
#[cfg(caskv_loom)]
#[doc(hidden)]
pub mod model;
pub(crate) mod record;
mod recover;
mod registration;
mod reserve;
mod snapshot;
#[cfg(test)]
mod tests;

/// Stand-ins for the tests of other modules (the server's), so they need nothing of `log`.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::log::{create_file, SegmentFile};
    use super::Options;

    /// A segment file whose every write and fsync fails once `broken` is set.
    struct Breakable(Box<dyn SegmentFile>, Arc<AtomicBool>);

    impl SegmentFile for Breakable {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            if self.1.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.0.append(bytes)
        }
        fn sync(&mut self) -> std::io::Result<()> {
            if self.1.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.0.sync()
        }
    }

    /// `options` on a disk that fails every write and fsync ("disk on fire") once `broken` is
    /// set.
    pub(crate) fn breakable_disk(options: Options, broken: Arc<AtomicBool>) -> Options {
        options.create_segment(Arc::new(move |path: &std::path::Path| {
            Ok(Box::new(Breakable(create_file(path)?, broken.clone())) as Box<dyn SegmentFile>)
        }))
    }
}

use std::fs::File;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use codec::{Codec, DecodeError};
pub use error::PersistError;
pub use log::FsyncPolicy;
pub use recover::RecoveryReport;
pub use snapshot::SnapshotReport;

use crate::db::DbChange;
use crate::entry::Entry;
use crate::error::StorageError;
use crate::expiry::{self, Clock, SystemClock};
use crate::journal::Written;
use crate::watch::{Change, Feed, FeedEvent, HistoryLimits};
use crate::{GlobalIndex, Registration, Registry, Store, StoreBuilder};
use journal::LogJournal;
use log::{CreateSegment, Level, Log};
use record::Space;
use reserve::Reservation;

/// How a data directory is opened.
///
/// # Example
/// ```
/// use caskv::persist::{FsyncPolicy, Options};
/// let options = Options::default().fsync(FsyncPolicy::EverySec).snapshot_after_bytes(256 << 20);
/// assert_eq!(options.fsync_policy(), FsyncPolicy::EverySec);
/// ```
#[derive(Clone)]
pub struct Options {
    fsync: FsyncPolicy,
    /// The KV store's bound, if any.
    bound: Option<CacheBound>,
    snapshot_after_bytes: u64,
    max_batch: usize,
    services: bool,
    service_ttl: Duration,
    /// What the change feed ([`Db::changes`](crate::Db::changes)) keeps.
    history: HistoryLimits,
    tick: Duration,
    create_segment: CreateSegment,
}

/// A KV store's bound ([`Options::max_entries`], [`Options::max_memory`]).
#[derive(Debug, Clone, Copy)]
enum CacheBound {
    Entries(u64),
    Bytes(u64),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: FsyncPolicy::Always,
            bound: None,
            snapshot_after_bytes: crate::defaults::SNAPSHOT_AFTER_BYTES,
            max_batch: crate::defaults::MAX_BATCH,
            services: false,
            service_ttl: crate::defaults::SERVICE_TTL,
            history: HistoryLimits::default(),
            tick: Duration::from_secs(1),
            create_segment: Arc::new(log::create_file),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("fsync", &self.fsync)
            .field("snapshot_after_bytes", &self.snapshot_after_bytes)
            .field("max_batch", &self.max_batch)
            .field("services", &self.services)
            .field("service_ttl", &self.service_ttl)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// When writes are acknowledged. Default [`FsyncPolicy::Always`].
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.fsync = policy;
        self
    }

    /// The fsync policy set.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.fsync
    }

    /// The batch bound set.
    pub(crate) fn batch_bound(&self) -> usize {
        self.max_batch
    }

    /// The services setting and their TTL: `Some(ttl)` when on.
    pub(crate) fn services_ttl(&self) -> Option<Duration> {
        self.services.then_some(self.service_ttl)
    }

    /// Take a snapshot (and drop the log it covers) once this many log bytes were written since
    /// the last one. Default 64 MiB; 0 turns automatic snapshots off.
    pub fn snapshot_after_bytes(mut self, bytes: u64) -> Self {
        self.snapshot_after_bytes = bytes;
        self
    }

    /// The most operations one batch may hold. Default 1000.
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max;
        self
    }

    /// Whether the database keeps a service [`Registry`] beside the KV store, sharing its
    /// global index and (on disk) its log. Default off: [`Db::registry`](crate::Db::registry)
    /// is `None` and [`Db::register`](crate::Db::register) is refused. A data directory that
    /// holds registrations must be opened with it on.
    pub fn services(mut self, on: bool) -> Self {
        self.services = on;
        self
    }

    /// The TTL of service registrations. Default 30 s.
    pub fn service_ttl(mut self, ttl: Duration) -> Self {
        self.service_ttl = ttl;
        self
    }

    /// Makes the KV store a cache of at most `n` keys ([`StoreBuilder::max_entries`]):
    /// evictions are deletes, logged like any other. Default: unbounded. Replaces a
    /// `max_memory`.
    ///
    /// [`StoreBuilder::max_entries`]: crate::StoreBuilder::max_entries
    pub fn max_entries(mut self, n: u64) -> Self {
        self.bound = Some(CacheBound::Entries(n));
        self
    }

    /// Makes the KV store a cache whose keys and values take at most `bytes` together, as
    /// the log encodes them ([`StoreBuilder::max_weight`]). Default: unbounded. Replaces a
    /// `max_entries`.
    ///
    /// [`StoreBuilder::max_weight`]: crate::StoreBuilder::max_weight
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.bound = Some(CacheBound::Bytes(bytes));
        self
    }

    /// What the change feed keeps ([`Db::changes`](crate::Db::changes)). Default
    /// [`HistoryLimits::default`]: 100,000 changes or 64 MiB, weighing keys and values by their
    /// encoded length.
    pub fn history(mut self, limits: HistoryLimits) -> Self {
        self.history = limits;
        self
    }

    /// The change feed's limits.
    pub(crate) fn history_limits(&self) -> HistoryLimits {
        self.history
    }

    /// Applies the KV store's bound to `builder`.
    pub(crate) fn bound<K: Codec, V: Codec>(
        &self,
        builder: StoreBuilder<K, V>,
    ) -> StoreBuilder<K, V> {
        match self.bound {
            None => builder,
            Some(CacheBound::Entries(n)) => builder.max_entries(n),
            Some(CacheBound::Bytes(bytes)) => builder.max_weight(bytes, |k: &K, v: &V| {
                u32::try_from(k.encoded_len().saturating_add(v.encoded_len())).unwrap_or(u32::MAX)
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn create_segment(mut self, create: CreateSegment) -> Self {
        self.create_segment = create;
        self
    }

    #[cfg(test)]
    pub(crate) fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }
}

/// The largest key plus value one write may log (16 MiB): a record must fit the log's 64 MiB
/// frame. A bigger write is refused before it is applied ([`Error::EntryTooLarge`]).
pub const MAX_ENTRY_BYTES: usize = 16 << 20;
/// The most a whole batch may log (60 MiB), counting the record's own bytes (a header, and
/// 25 bytes per write or 5 per delete besides its key and value), for the same reason.
pub const MAX_BATCH_BYTES: usize = 60 << 20;

/// A write applied in memory and logged, whose durability is still to be waited for.
///
/// Wait for it either way:
/// - [`wait`](Pending::wait) blocks the calling thread (it may write and fsync the log itself,
///   for every writer waiting with it);
/// - `.await` it: `Pending` is a [`Future`] woken by the log's flusher thread when the round
///   that covers it ends, so an async task never blocks on the disk and needs no blocking
///   pool. The library depends on no runtime for this. Dropping it unfinished is harmless
///   (the write stays applied and is flushed with the next round).
///
/// Either way it resolves to what the write returned (its index), or to the
/// [`StorageError`] that failed the log.
///
/// # Example
/// ```
/// # use caskv::{persist::Options, Db};
/// # let dir = std::env::temp_dir().join(format!("caskv-pending-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let db: Db<String, u64> = Db::open(&dir, Options::default())?;
/// // Pipelining: issue several writes, then wait for the last; one fsync can cover them all.
/// let pending: Vec<_> = (0..10u64)
///     .map(|i| db.set(format!("k{i}"), i))
///     .collect::<Result<_, _>>()?;
/// for p in pending {
///     p.wait()?;
/// }
/// # drop(db);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a write is acknowledged as durable only once `wait` or `.await` returns Ok"]
pub struct Pending<T> {
    /// Taken when the future completes.
    value: Option<T>,
    ticket: Option<u64>,
    /// The log it waits for: none for a write of an in-memory [`Db`](crate::Db) (ready at once).
    log: Option<Arc<Log>>,
    /// This future's registration with the log while it waits (see `Shared::poll_ticket`).
    waiter: Option<u64>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("value", &self.value)
            .field("durable", &self.is_durable())
            .finish()
    }
}

impl<T> Pending<T> {
    /// A write with `ticket` in `log` (none: nothing was logged) that returned `value`.
    pub(crate) fn logged(value: T, ticket: Option<u64>, log: Arc<Log>) -> Self {
        Pending {
            value: Some(value),
            ticket,
            log: Some(log),
            waiter: None,
        }
    }

    /// A write with nothing to wait for (an in-memory store): ready at once.
    pub(crate) fn ready(value: T) -> Self {
        Pending {
            value: Some(value),
            ticket: None,
            log: None,
            waiter: None,
        }
    }

    /// The log and the ticket to wait for, if there is anything to wait for.
    fn waiting(&self) -> Option<(&Arc<Log>, u64)> {
        self.log.as_ref().zip(self.ticket)
    }

    /// Blocks until the write is durable under the store's [`FsyncPolicy`]; returns what the
    /// write returned (its index). An error means the log failed: the write is not durable.
    ///
    /// # Panics
    /// If the future already completed (was `.await`ed to `Ok`).
    pub fn wait(mut self) -> Result<T, StorageError> {
        if let Some((log, ticket)) = self.waiting() {
            log.wait(ticket, log.ack_level())?;
        }
        Ok(self.value.take().expect("`Pending` already completed"))
    }

    /// Whether [`wait`](Pending::wait) would return at once.
    pub fn is_durable(&self) -> bool {
        self.waiting()
            .is_none_or(|(log, t)| log.is_done(t, log.ack_level()))
    }
}

/// `Pending` never pins its value: `poll` only moves it out, never hands out a pinned reference.
impl<T> Unpin for Pending<T> {}

impl<T> std::future::Future for Pending<T> {
    type Output = Result<T, StorageError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        if let (Some(log), Some(ticket)) = (&this.log, this.ticket) {
            let done = log.poll_ticket(ticket, &mut this.waiter, cx.waker());
            let std::task::Poll::Ready(result) = done else {
                return std::task::Poll::Pending;
            };
            // Ready: the section that published the position (or the failure) took the
            // registration out of the log already, or is about to under the lock.
            this.waiter = None;
            result?;
        }
        let value = this.value.take();
        std::task::Poll::Ready(Ok(value.expect("`Pending` polled after completion")))
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let (Some(log), Some(ticket), Some(waiter)) = (&self.log, self.ticket, self.waiter) {
            log.forget(ticket, waiter);
        }
    }
}

/// The data directory of a [`Db`](crate::Db) opened with [`Db::open`](crate::Db::open): the
/// log, the background thread (periodic flush, automatic snapshots) and the directory's lock.
///
/// Dropping it stops the background thread, then flushes and fsyncs the log.
pub(crate) struct Durable<K, V> {
    inner: Arc<Inner<K, V>>,
    stop: Option<mpsc::Sender<()>>,
    worker: Option<JoinHandle<()>>,
}

/// What the store, the background thread and the snapshotter share.
pub(crate) struct Inner<K, V> {
    pub(crate) store: Arc<Store<K, V>>,
    /// The change feed of the store and the registry.
    pub(crate) feed: Arc<Feed<DbChange<K, V>>>,
    /// The service registry, when the options turned services on.
    pub(crate) registry: Option<Arc<Registry>>,
    pub(crate) log: Arc<Log>,
    reservation: Arc<Reservation>,
    dir: PathBuf,
    options: Options,
    /// One snapshot at a time.
    snapshotting: Mutex<()>,
    /// Log position at the last snapshot's rotation.
    snapshot_base: AtomicU64,
    /// Bytes of the recovered log not yet covered by a snapshot.
    recovered_bytes: AtomicU64,
    report: RecoveryReport,
    /// Holds the directory's OS lock for as long as it is open.
    _lock: File,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<K, V> Durable<K, V>
where
    K: Codec + Hash + Eq + Ord + Clone + Send + Sync + 'static,
    V: Codec + Clone + Send + Sync + 'static,
{
    /// Opens (creating if needed) the data directory `dir`: see [`Db::open`](crate::Db::open).
    pub(crate) fn open(dir: &Path, options: Options) -> Result<Self, PersistError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(PersistError::io(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(PersistError::io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PersistError::Locked { path: lock_path })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(PersistError::io(&lock_path)(e)),
        }

        let mut recovered = recover::recover(&dir)?;
        // Refused before anything is written to the directory (not even a new segment).
        if options.services_ttl().is_none() && !recovered.services.is_empty() {
            return Err(PersistError::ServicesOff {
                dir,
                registrations: recovered.services.len(),
            });
        }
        let log = Arc::new(
            Log::create(
                &dir,
                recovered.last_segment + 1,
                options.fsync,
                options.create_segment.clone(),
            )
            .map_err(PersistError::io(&dir))?,
        );
        let global_index = Arc::new(
            GlobalIndex::resuming_after(recovered.high_water).ok_or_else(|| {
                PersistError::Corrupt {
                    file: dir.clone(),
                    offset: 0,
                    reason: format!(
                        "high-water mark {} is beyond the index space",
                        recovered.high_water
                    ),
                }
            })?,
        );
        let reservation = Arc::new(Reservation::new(log.clone(), recovered.high_water));
        global_index.set_reserve(Box::new(reservation.clone()));

        // The feed resumes from the log: the changes the segments after the snapshot hold
        // (older ones are compacted), every index up to the high-water mark final.
        let feed = Feed::new(options.history);
        let logged = logged_changes::<K, V>(std::mem::take(&mut recovered.logged))?;
        feed.resume(recovered.logged_after, logged, recovered.high_water);
        let store: Store<K, V> = options
            .bound(Store::builder())
            .global_index(global_index.clone())
            .max_batch(options.max_batch)
            .feed(feed.clone(), DbChange::Kv)
            .build_journaled(Box::new(LogJournal::<K, V>::new(log.clone(), Space::Kv)));
        let now = SystemClock.now_ms();
        for (key, v) in recovered.kv {
            if expiry::has_expired(v.deadline, now) {
                // Its deadline passed while the store was down: it is gone, as if deleted
                // then (a later write to the key creates it afresh).
                continue;
            }
            let key = K::decode(&key).map_err(|source| PersistError::Decode {
                what: "key",
                source,
            })?;
            let value = V::decode(&v.value).map_err(|source| PersistError::Decode {
                what: "value",
                source,
            })?;
            store.engine.restore(
                key,
                value,
                v.flags,
                v.modify_index,
                v.create_index,
                v.deadline,
            );
        }

        // With services off there are none to restore (refused above otherwise).
        let registry = match options.services_ttl() {
            Some(ttl) => Some(Arc::new(restore_services(
                recovered.services,
                global_index,
                &log,
                ttl,
                feed.clone(),
            )?)),
            None => None,
        };

        let mut report = recovered.report;
        report.high_water = recovered.high_water;
        if report.truncated_bytes > 0 || report.records > 0 || report.snapshot.is_some() {
            tracing::info!(
                dir = %dir.display(),
                snapshot_entries = report.snapshot_entries,
                segments = report.segments,
                records = report.records,
                truncated_bytes = report.truncated_bytes,
                high_water = report.high_water,
                elapsed = ?report.elapsed,
                "caskv: recovered the data directory"
            );
        }
        let inner = Arc::new(Inner {
            store: Arc::new(store),
            feed,
            registry,
            log,
            reservation,
            dir,
            snapshotting: Mutex::new(()),
            snapshot_base: AtomicU64::new(0),
            recovered_bytes: AtomicU64::new(recovered.log_bytes),
            report,
            _lock: lock,
            options,
        });
        let (stop, stopped) = mpsc::channel();
        let worker = {
            let shared = inner.clone();
            std::thread::Builder::new()
                .name("caskv-log".into())
                .spawn(move || background(&shared, &stopped))
                .map_err(PersistError::io(&inner.dir))?
        };
        Ok(Durable {
            inner,
            stop: Some(stop),
            worker: Some(worker),
        })
    }

    /// Writes a snapshot now and drops the log it covers.
    pub(crate) fn snapshot(&self) -> Result<SnapshotReport, PersistError> {
        self.inner.snapshot()
    }

    /// Flushes and fsyncs everything logged so far (whatever the policy).
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        self.inner.log.flush_all(Level::Synced)
    }
}

impl<K, V> Durable<K, V> {
    /// The KV store.
    pub(crate) fn store(&self) -> &Arc<Store<K, V>> {
        &self.inner.store
    }

    /// The change feed.
    pub(crate) fn feed(&self) -> &Arc<Feed<DbChange<K, V>>> {
        &self.inner.feed
    }

    /// The service registry, when on.
    pub(crate) fn registry(&self) -> Option<&Arc<Registry>> {
        self.inner.registry.as_ref()
    }

    /// What opening the directory recovered.
    pub(crate) fn recovery(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The fsync policy.
    pub(crate) fn policy(&self) -> FsyncPolicy {
        self.inner.options.fsync
    }

    /// The log, for the tests that look at its waiters.
    #[cfg(test)]
    pub(crate) fn log(&self) -> &Log {
        &self.inner.log
    }

    /// The log's failure, once it failed: every later write is refused with it.
    pub(crate) fn failure(&self) -> Option<StorageError> {
        self.inner.log.failure()
    }

    /// A [`Pending`] for a write that returned `value` and was logged as `written` (none: it
    /// logged nothing, as a failed compare of `compare_and_set`).
    pub(crate) fn pending<T>(&self, value: T, written: Option<Written>) -> Pending<T> {
        Pending::logged(
            value,
            written.and_then(|w| w.ticket),
            self.inner.log.clone(),
        )
    }
}

/// The logged mutations as the feed's changes: one write is a set or a delete, several a batch
/// (a batch that wrote one key reads back as a single set or delete).
fn logged_changes<K: Codec, V: Codec>(
    logged: Vec<recover::LoggedWrites>,
) -> Result<Vec<DbChange<K, V>>, PersistError> {
    fn decoded<K: Codec, V: Codec>(
        index: u64,
        writes: Vec<(Vec<u8>, Option<recover::OwnedVersion>)>,
    ) -> Result<Change<K, V>, PersistError> {
        let mut items = Vec::with_capacity(writes.len());
        for (key, version) in writes {
            let key = K::decode(&key).map_err(|source| PersistError::Decode {
                what: "key",
                source,
            })?;
            let entry = match version {
                None => None,
                Some(v) => Some(Entry::new(
                    V::decode(&v.value).map_err(|source| PersistError::Decode {
                        what: "value",
                        source,
                    })?,
                    v.flags,
                    v.modify_index,
                    v.create_index,
                    v.deadline,
                )),
            };
            items.push((key, entry));
        }
        Ok(match (items.len(), items.pop()) {
            (1, Some((key, Some(entry)))) => Change::Set { key, entry },
            (1, Some((key, None))) => Change::Delete { key, index },
            (_, last) => {
                items.extend(last);
                Change::Batch {
                    index,
                    writes: items,
                }
            }
        })
    }
    logged
        .into_iter()
        .map(|l| match l.space {
            Space::Kv => decoded::<K, V>(l.index, l.writes).map(DbChange::Kv),
            Space::Services => decoded::<String, Registration>(l.index, l.writes).map(|c| {
                DbChange::Service(match c {
                    Change::Set { key, entry } => Change::Set {
                        key,
                        entry: entry.map_value(Arc::new),
                    },
                    Change::Delete { key, index } => Change::Delete { key, index },
                    Change::Batch { index, writes } => Change::Batch {
                        index,
                        writes: writes
                            .into_iter()
                            .map(|(k, e)| (k, e.map(|e| e.map_value(Arc::new))))
                            .collect(),
                    },
                })
            }),
        })
        .collect()
}

/// The recovered registrations, in a registry journaled to `log`'s services space. A restart
/// grants every registration a fresh TTL: heartbeats are not logged, so the recorded deadline
/// of a live service may be long past.
fn restore_services<K, V>(
    recovered: std::collections::HashMap<Vec<u8>, recover::OwnedVersion>,
    global_index: Arc<GlobalIndex>,
    log: &Arc<Log>,
    ttl: Duration,
    feed: Arc<Feed<DbChange<K, V>>>,
) -> Result<Registry, PersistError>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    DbChange<K, V>: FeedEvent,
{
    let services: Store<String, Arc<Registration>> = Store::builder()
        .global_index(global_index)
        .feed(feed, DbChange::Service)
        .build_journaled(Box::new(LogJournal::<String, Arc<Registration>>::new(
            log.clone(),
            Space::Services,
        )));
    let renewed = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    for (name, v) in recovered {
        let name = String::decode(&name).map_err(|source| PersistError::Decode {
            what: "key",
            source,
        })?;
        let reg = Registration::decode(&v.value).map_err(|source| PersistError::Decode {
            what: "value",
            source,
        })?;
        let reg = Registration::restored(reg.service().clone(), reg.expires_at_ms().max(renewed));
        services.engine.restore(
            name,
            Arc::new(reg),
            v.flags,
            v.modify_index,
            v.create_index,
            0,
        );
    }
    Ok(Registry::with_store(
        services,
        ttl,
        Some(registration::admit),
    ))
}

impl<K, V> Inner<K, V>
where
    K: Codec + Hash + Eq + Ord + Clone + Send + Sync + 'static,
    V: Codec + Clone + Send + Sync + 'static,
{
    fn snapshot_due(&self) -> bool {
        let every = self.options.snapshot_after_bytes;
        // Relaxed: counters read by the one background thread and the snapshotter.
        let since = self.log.appended() - self.snapshot_base.load(Ordering::Relaxed)
            + self.recovered_bytes.load(Ordering::Relaxed);
        every > 0 && since >= every
    }

    pub(crate) fn snapshot(&self) -> Result<SnapshotReport, PersistError> {
        let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
        let report = snapshot::write(self)?;
        // Relaxed: see `snapshot_due`.
        self.snapshot_base
            .store(report.log_position, Ordering::Relaxed);
        self.recovered_bytes.store(0, Ordering::Relaxed);
        Ok(report)
    }
}

/// The background thread: periodic flush (and fsync for `everysec`), automatic snapshots.
fn background<K, V>(inner: &Inner<K, V>, stop: &mpsc::Receiver<()>)
where
    K: Codec + Hash + Eq + Ord + Clone + Send + Sync + 'static,
    V: Codec + Clone + Send + Sync + 'static,
{
    let level = match inner.options.fsync {
        FsyncPolicy::Always | FsyncPolicy::EverySec => Level::Synced,
        FsyncPolicy::Never => Level::Written,
    };
    loop {
        match stop.recv_timeout(inner.options.tick) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if inner.log.failure().is_some() {
            continue;
        }
        // Errors poison the log and are logged there.
        let _ = inner.log.flush_all(level);
        if inner.snapshot_due() {
            if let Err(e) = inner.snapshot() {
                tracing::error!(error = %e, "caskv: background snapshot failed");
            }
        }
    }
}

impl<K, V> Drop for Durable<K, V> {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        if self.inner.log.failure().is_none() {
            if let Err(e) = self.inner.log.flush_all(Level::Synced) {
                tracing::error!(error = %e, "caskv: final log flush failed");
            }
        }
    }
}
