//! The change feed: the committed mutations of every store on one [`GlobalIndex`], in index
//! order and without gaps, from a bounded history.
//!
//! # How indices become a feed
//! Every index the global counter hands out ends in exactly one report: *applied* (the
//! mutation, as an event) or *skipped* (a writer lost its CAS after taking it, or a caller of
//! [`GlobalIndex::next`] used it outside any store). A writer reports after its mutation is
//! visible to readers (after its CAS, and after the journal's record on a journaled store).
//!
//! Reports go to **stripes**: one small buffer per group of threads, each on its own cache
//! line, behind its own mutex, which the reporting thread almost always finds free. Nothing
//! shared is written per mutation beyond the index counter every write already takes.
//!
//! The **watermark** `W` is the highest index such that every index `≤ W` was reported. It is
//! advanced lazily, under the history's lock, by whoever reads the feed (and by a writer whose
//! stripe fills up): drain every stripe, park out-of-order reports, then emit the contiguous
//! run from `W + 1`. So index `I` is emitted only once every index below it is applied or
//! skipped, and every emitted mutation was visible to readers before it was emitted: the
//! feed, read at any moment, is a prefix of the index order of the mutations readers see.
//!
//! The history keeps the last emitted events up to [`HistoryLimits`]; a read from an index it
//! no longer holds is [`Compacted`], never a silent jump.
//!
//! [`GlobalIndex`]: crate::GlobalIndex
//! [`GlobalIndex::next`]: crate::GlobalIndex::next

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::sync::{Mutex, MutexGuard, StdArc};

/// How much a [`Feed`] remembers: the last `max_changes` events, and no more than `max_bytes`
/// of them by their [`FeedEvent::weight`]. Defaults: 100,000 changes, 64 MiB.
///
/// # Example
/// ```
/// use caskv::HistoryLimits;
/// let limits = HistoryLimits { max_changes: 1_000, ..HistoryLimits::default() };
/// assert_eq!(limits.max_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most events kept (at least one is always kept).
    pub max_changes: usize,
    /// The most bytes of events kept, as [`FeedEvent::weight`] counts them.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_changes: crate::defaults::HISTORY_CHANGES,
            max_bytes: crate::defaults::HISTORY_BYTES,
        }
    }
}

/// The feed no longer holds the changes after the index asked for: the oldest index it can
/// answer from is `oldest` (read the state again, then follow the feed from there).
///
/// # Example
/// ```
/// use caskv::{HistoryLimits, Store};
/// let store: Store<u32, u32> = Store::builder()
///     .history(HistoryLimits { max_changes: 2, ..HistoryLimits::default() })
///     .build();
/// for i in 0..5 {
///     store.set(i, i);
/// }
/// let compacted = store.changes(0).unwrap_err();
/// assert_eq!(compacted.oldest, 3);
/// assert_eq!(store.changes(3).unwrap().len(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The smallest `after` the feed still answers.
    pub oldest: u64,
}

impl fmt::Display for Compacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the history was compacted: the oldest index it answers from is {}",
            self.oldest
        )
    }
}

impl std::error::Error for Compacted {}

/// What a [`Feed`] holds: one committed index.
pub trait FeedEvent: Send + Sync + 'static {
    /// The index the event was committed at.
    fn index(&self) -> u64;
    /// What the event costs against [`HistoryLimits::max_bytes`].
    fn weight(&self) -> usize;
}

/// Takes an index's end as a skip: the index names no mutation. The one thing a
/// [`GlobalIndex`](crate::GlobalIndex) knows of the feed attached to it.
pub(crate) trait Skips: Send + Sync {
    /// `index` was handed out and will never name a mutation.
    fn skip(&self, index: u64);
    /// Starts the feed after `high_water` (once; see [`Feed::start_after`]).
    fn start_after(&self, high_water: u64);
}

/// The reports of one group of threads, on its own cache line.
#[repr(align(128))]
struct Stripe<E>(Mutex<Vec<(u64, Option<E>)>>);

/// A stripe is drained by its own writer once it holds this many reports.
const DRAIN_AT: usize = 64;

/// The emitted history and what waits to be emitted.
struct Log<E> {
    /// The next index to emit (the watermark plus one).
    next: u64,
    /// Reports above `next`, waiting for the ones below them.
    pending: BTreeMap<u64, Option<E>>,
    /// Emitted events, in index order.
    events: VecDeque<StdArc<E>>,
    /// The sum of `events`' weights.
    bytes: usize,
    /// The smallest `after` answered: every event above it is still in `events`.
    floor: u64,
    /// Whether [`Feed::start_after`] ran.
    started: bool,
}

/// A bounded, gap-free history of committed mutations in index order (see the
/// [module docs](self)). A store built with [`StoreBuilder::history`](crate::StoreBuilder::history)
/// keeps one of [`Change`](crate::Change)s and reads it with
/// [`Store::changes`](crate::Store::changes); stores that share a
/// [`GlobalIndex`](crate::GlobalIndex) share one feed of an event type of the caller's
/// ([`StoreBuilder::feed`](crate::StoreBuilder::feed)).
///
/// # Invariants
/// - Every index above `start` handed out by the feed's index is reported exactly once.
/// - `events` is strictly increasing in index, all `≤` the watermark; every index in
///   `(floor, watermark]` that names a mutation of a store reporting here is in `events`.
/// - The watermark never decreases; `floor` never decreases.
pub struct Feed<E> {
    stripes: Box<[Stripe<E>]>,
    log: Mutex<Log<E>>,
    limits: HistoryLimits,
}

impl<E> fmt::Debug for Feed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<E: FeedEvent> Feed<E> {
    /// An empty feed, to be attached to the stores of one index with
    /// [`StoreBuilder::feed`](crate::StoreBuilder::feed).
    pub fn new(limits: HistoryLimits) -> StdArc<Self> {
        // Under loom two stripes: the models have two or three threads.
        let stripes = if cfg!(caskv_loom) {
            2
        } else {
            std::thread::available_parallelism().map_or(4, |n| n.get() * 2)
        };
        StdArc::new(Feed {
            stripes: (0..stripes.max(2))
                .map(|_| Stripe(Mutex::new(Vec::new())))
                .collect(),
            log: Mutex::new(Log {
                next: 1,
                pending: BTreeMap::new(),
                events: VecDeque::new(),
                bytes: 0,
                floor: 0,
                started: false,
            }),
            limits,
        })
    }

    /// Starts the feed after `high_water`: indices up to it are not reported. Called once,
    /// when the feed is attached to its index; a later call changes nothing.
    pub(crate) fn start_after(&self, high_water: u64) {
        let mut log = self.lock_log();
        if log.started {
            return;
        }
        log.started = true;
        log.next = high_water + 1;
        log.floor = high_water;
    }

    /// Starts the feed after `after` with `events` (the changes above it, in any order)
    /// already committed, every index up to `high_water` final: a persistent store's feed
    /// after a restart, resumed from its log. A later [`start_after`](Feed::start_after)
    /// changes nothing.
    pub(crate) fn resume(&self, after: u64, mut events: Vec<E>, high_water: u64) {
        let mut log = self.lock_log();
        log.started = true;
        log.floor = after;
        log.next = high_water.max(after) + 1;
        events.retain(|e| e.index() > after);
        events.sort_unstable_by_key(E::index);
        for event in events {
            log.bytes += event.weight();
            log.events.push_back(StdArc::new(event));
        }
        self.advance(&mut log);
    }

    /// The highest index up to which the feed is complete (advanced first: every index at or
    /// below it was applied or given up, and its changes are in the history or compacted).
    pub fn watermark(&self) -> u64 {
        let mut log = self.lock_log();
        self.advance(&mut log);
        log.next - 1
    }

    /// The smallest `after` the feed still answers (see [`Compacted`]; advanced first).
    pub fn oldest(&self) -> u64 {
        let mut log = self.lock_log();
        self.advance(&mut log);
        log.floor
    }

    /// Reports a committed mutation (`Some`) or a skipped index (`None`).
    pub(crate) fn report(&self, index: u64, event: Option<E>) {
        let stripe = &self.stripes[stripe_of_thread() % self.stripes.len()];
        let full = {
            let mut reports = lock(&stripe.0);
            reports.push((index, event));
            reports.len() >= DRAIN_AT
        };
        if full {
            // Bounded memory without a reader: the writer whose stripe filled drains all of
            // them, unless an advance is already running (it will drain this stripe too, or
            // the next full one will).
            if let Ok(mut log) = self.log.try_lock() {
                self.advance(&mut log);
            }
        }
    }

    /// The events committed after `after`, in index order, at most `max` of them, up to the
    /// watermark (advanced first). An `after` at or above the watermark gets none.
    ///
    /// # Errors
    /// [`Compacted`] when events after `after` are no longer held.
    pub fn read(&self, after: u64, max: usize) -> Result<Vec<StdArc<E>>, Compacted> {
        let mut log = self.lock_log();
        self.advance(&mut log);
        if after < log.floor {
            return Err(Compacted { oldest: log.floor });
        }
        let first = log.events.partition_point(|e| e.index() <= after);
        Ok(log.events.range(first..).take(max).cloned().collect())
    }

    /// Drains every stripe and emits what is contiguous from the watermark; trims to the limits.
    fn advance(&self, log: &mut Log<E>) {
        for stripe in self.stripes.iter() {
            let reports = std::mem::take(&mut *lock(&stripe.0));
            for (index, event) in reports {
                if index >= log.next {
                    let previous = log.pending.insert(index, event);
                    debug_assert!(previous.is_none(), "index {index} reported twice");
                }
            }
        }
        while let Some(entry) = log.pending.first_entry() {
            if *entry.key() != log.next {
                break;
            }
            if let Some(event) = entry.remove() {
                log.bytes += event.weight();
                log.events.push_back(StdArc::new(event));
            }
            log.next += 1;
        }
        while log.events.len() > self.limits.max_changes.max(1)
            || (log.bytes > self.limits.max_bytes && log.events.len() > 1)
        {
            let Some(oldest) = log.events.pop_front() else {
                break;
            };
            log.bytes -= oldest.weight();
            log.floor = oldest.index();
        }
    }

    fn lock_log(&self) -> MutexGuard<'_, Log<E>> {
        lock(&self.log)
    }
}

impl<E: FeedEvent> Skips for Feed<E> {
    fn skip(&self, index: u64) {
        self.report(index, None);
    }

    fn start_after(&self, high_water: u64) {
        Feed::start_after(self, high_water);
    }
}

/// Locks `mutex`; a panic while it was held (a user's `Clone` or `weight`) left the data
/// whole (every change to it is a single push or pop), so the poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// This thread's stripe number (before the modulo).
fn stripe_of_thread() -> usize {
    use std::cell::Cell;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            // Relaxed: a counter that only spreads threads over stripes.
            s.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        }
        s.get()
    })
}
