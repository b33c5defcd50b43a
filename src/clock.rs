//! The global index: one counter that orders every mutation of a store and of the service
//! registry that shares it.

use crate::sync::{AtomicU64, Ordering};

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
#[derive(Debug)]
pub struct GlobalIndex {
    /// The last index handed out (0 before the first).
    last: AtomicU64,
}

impl GlobalIndex {
    /// A counter whose first index is 1.
    pub fn new() -> Self {
        Self::starting_after(0)
    }

    /// A counter whose first index is `high_water + 1`: restart a store above every index it
    /// handed out before.
    pub fn starting_after(high_water: u64) -> Self {
        GlobalIndex {
            last: AtomicU64::new(high_water),
        }
    }

    /// Takes the next index.
    ///
    /// # Panics
    /// Never in practice: it would take 584 years at a billion writes per second to exhaust
    /// `u64`. The counter saturates rather than wrap, so an index is never reused.
    pub fn next(&self) -> u64 {
        // Relaxed is enough for uniqueness and monotonicity: both follow from the single
        // modification order of this one atomic. Callers that need the index ordered after a
        // cell they loaded get that from the cell's Acquire load, which is sequenced before this.
        let prev = self.last.fetch_add(1, Ordering::Relaxed);
        prev.saturating_add(1)
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
