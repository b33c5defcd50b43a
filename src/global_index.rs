//! The global index: one counter that orders every mutation of a store and of the service
//! registry that shares it.

use std::sync::OnceLock;

use crate::sync::{AtomicU64, Ordering, StdArc};
use crate::watch::Skips;

/// Makes an index durable before it is handed out: a persistent store's reservation of index
/// ranges in its log, so that no index is handed out twice, not even across a crash.
pub(crate) trait Reserve: Send + Sync {
    /// Returns once `index` is covered by a durable reservation. Cheap when it already is.
    fn cover(&self, index: u64);
}

/// The source of `modify_index` and `create_index` values.
///
/// # Invariants
/// - Every call to [`next`](GlobalIndex::next) returns a value strictly greater than every value
///   returned before it, and greater than the high-water mark the counter was started above.
///   Values are therefore never reused, not even after the entry that carried one is deleted.
/// - Indices start at 1; 0 never names a version (it means "create-only" in a CAS).
///
/// Values consumed by a write that then fails (a CAS that lost a race) are simply skipped, so
/// the sequence of committed indices has gaps.
///
/// # Example
/// ```
/// use caskv::GlobalIndex;
/// let index = GlobalIndex::starting_after(41);
/// assert_eq!(index.next(), 42);
/// assert_eq!(index.next(), 43);
/// assert_eq!(index.high_water(), 43);
/// ```
pub struct GlobalIndex {
    /// The last index handed out (0 before the first).
    last: AtomicU64,
    /// A persistent store's reservation; unset for an in-memory counter.
    reserve: OnceLock<Box<dyn Reserve>>,
    /// The change feed of the stores on this index, if one keeps a history: every index
    /// handed out must end in it (applied, or skipped).
    feed: OnceLock<StdArc<dyn Skips>>,
}

impl std::fmt::Debug for GlobalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalIndex")
            .field("last", &self.high_water())
            .field("persistent", &self.reserve.get().is_some())
            .finish()
    }
}

impl GlobalIndex {
    /// The bound (2^63) a counter must *start* below. Indices handed out after such a start
    /// may pass it, but reaching `u64::MAX` from there takes another 2^63 writes (292 years at a
    /// billion a second), so the `u64` never wraps and an index is never reused.
    pub const LIMIT: u64 = 1 << 63;

    /// A counter whose first index is 1.
    pub fn new() -> Self {
        GlobalIndex {
            last: AtomicU64::new(0),
            reserve: OnceLock::new(),
            feed: OnceLock::new(),
        }
    }

    /// A counter whose first index is `high_water + 1`: restart a store above every index it
    /// handed out before.
    ///
    /// # Panics
    /// If `high_water >= GlobalIndex::LIMIT` (no index this crate hands out is that large; use
    /// [`try_starting_after`](GlobalIndex::try_starting_after) for a value read from outside).
    pub fn starting_after(high_water: u64) -> Self {
        match Self::try_starting_after(high_water) {
            Some(index) => index,
            None => panic!(
                "caskv: high-water mark {high_water} is not below GlobalIndex::LIMIT ({})",
                Self::LIMIT
            ),
        }
    }

    /// A counter whose first index is `high_water + 1`, or `None` if `high_water` is not below
    /// [`GlobalIndex::LIMIT`].
    ///
    /// ```
    /// use caskv::GlobalIndex;
    /// assert!(GlobalIndex::try_starting_after(u64::MAX).is_none());
    /// assert_eq!(GlobalIndex::try_starting_after(7).unwrap().next(), 8);
    /// ```
    pub fn try_starting_after(high_water: u64) -> Option<Self> {
        (high_water < Self::LIMIT).then(|| GlobalIndex {
            last: AtomicU64::new(high_water),
            reserve: OnceLock::new(),
            feed: OnceLock::new(),
        })
    }

    /// Where a persistent store may resume: above [`LIMIT`](GlobalIndex::LIMIT) too, since
    /// reservations step past the last index handed out, but never within 2^62 of `u64::MAX`.
    pub(crate) const RESUME_LIMIT: u64 = Self::LIMIT + (1 << 62);

    /// A counter resuming after a recovered high-water mark (which may be past `LIMIT`, see
    /// [`RESUME_LIMIT`](GlobalIndex::RESUME_LIMIT)); `None` beyond that.
    pub(crate) fn resuming_after(high_water: u64) -> Option<Self> {
        (high_water < Self::RESUME_LIMIT).then(|| GlobalIndex {
            last: AtomicU64::new(high_water),
            reserve: OnceLock::new(),
            feed: OnceLock::new(),
        })
    }

    /// Takes the next index, for a caller's own use: on an index with a change feed it is
    /// recorded there as naming no mutation (it is never reused either way).
    pub fn next(&self) -> u64 {
        let index = self.take();
        self.skip(index);
        index
    }

    /// Takes the next index for a store's mutation, which reports it to the feed itself
    /// (applied, or [`skip`](GlobalIndex::skip)ped).
    #[inline]
    pub(crate) fn take(&self) -> u64 {
        // Relaxed is enough for uniqueness and monotonicity: both follow from the single
        // modification order of this one atomic. Callers that need the index ordered after a
        // cell they loaded get that from the cell's Acquire load, which is sequenced before this.
        // No wrap: the counter starts below LIMIT (2^63), or a recovered store below
        // RESUME_LIMIT (2^63 + 2^62), and would need at least 2^62 more calls.
        let index = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(reserve) = self.reserve.get() {
            reserve.cover(index);
        }
        index
    }

    /// Records `index` in the feed (if any) as naming no mutation: a write took it and lost
    /// its CAS, or a store without a feed of its own applied it on an index that has one.
    #[inline]
    pub(crate) fn skip(&self, index: u64) {
        if let Some(feed) = self.feed.get() {
            feed.skip(index);
        }
    }

    /// Attaches `feed` (once): returns whether `feed` is now this index's feed (it already was,
    /// or none was), and the index it starts after.
    pub(crate) fn attach_feed(&self, feed: StdArc<dyn Skips>) -> Option<u64> {
        let attached = self.feed.get_or_init(|| feed.clone());
        if !std::ptr::addr_eq(StdArc::as_ptr(attached), StdArc::as_ptr(&feed)) {
            return None;
        }
        // Attached while the store is built, before any store on this index writes (the
        // builder's documented contract): no index is in flight, so every index above the
        // high-water mark is reported to the feed.
        Some(self.high_water())
    }

    /// Makes every later index durable before it is handed out (a persistent store).
    pub(crate) fn set_reserve(&self, reserve: Box<dyn Reserve>) {
        // Set once, right after recovery and before the counter is shared.
        let _ = self.reserve.set(reserve);
    }

    /// The last index handed out: the high-water mark to persist.
    pub fn high_water(&self) -> u64 {
        // Relaxed: a snapshot of a monotonic counter; callers that need it ordered after their
        // own writes read it after those writes in program order.
        self.last.load(Ordering::Relaxed)
    }
}

impl Default for GlobalIndex {
    fn default() -> Self {
        Self::new()
    }
}
