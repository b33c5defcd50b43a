//! A bounded store's counters: hits, misses, admissions, evictions and expirations, striped so
//! that no two threads count on the same cache line (each thread adds to the stripe its
//! thread-local number picks; a reader sums the stripes). Every add is one `Relaxed`
//! `fetch_add`: counters are independent sums, and a reader needs no ordering with what they
//! count.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What a bounded store has counted since it was built. Read with
/// [`Store::cache_stats`](crate::Store::cache_stats).
///
/// ```
/// use caskv::Store;
/// let cache: Store<u32, u32> = Store::builder().max_entries(1).build();
/// cache.set(1, 1);
/// cache.get(&1); // a hit
/// cache.get(&7); // a miss
/// cache.set(2, 2); // over the bound: one of the two keys is evicted
/// let stats = cache.cache_stats().unwrap();
/// assert_eq!((stats.hits, stats.misses, stats.inserts, stats.evictions), (1, 1, 2, 1));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads that found the key (`get`, `get_with`, `contains_key`, a pinned `get`).
    pub hits: u64,
    /// Reads that did not.
    pub misses: u64,
    /// Keys made present (a write of a key that was absent).
    pub inserts: u64,
    /// Entries deleted to keep the bound.
    pub evictions: u64,
    /// Entries deleted because their time to live ran out (by a write that met them, a purge,
    /// or the policy).
    pub expirations: u64,
}

/// Stripes of counters; threads take them round-robin.
const STRIPES: usize = 32;

/// Which counter.
#[derive(Clone, Copy)]
pub(crate) enum Count {
    Hit = 0,
    Miss = 1,
    Insert = 2,
    Eviction = 3,
    Expiration = 4,
}

/// One cache line (two, for the adjacent-line prefetcher) of counters.
#[repr(align(128))]
#[derive(Default)]
struct Stripe([AtomicU64; 5]);

/// A store's striped counters.
pub(crate) struct Counters(Box<[Stripe]>);

impl Counters {
    pub(crate) fn new() -> Self {
        Counters((0..STRIPES).map(|_| Stripe::default()).collect())
    }

    /// Adds one to `what` on this thread's stripe.
    #[inline]
    pub(crate) fn add(&self, what: Count) {
        // Relaxed: an independent sum (see the module docs).
        self.0[stripe()].0[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The sums.
    pub(crate) fn read(&self) -> CacheStats {
        let sum = |what: Count| {
            self.0
                .iter()
                // Relaxed: as in `add`.
                .map(|s| s.0[what as usize].load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        CacheStats {
            hits: sum(Count::Hit),
            misses: sum(Count::Miss),
            inserts: sum(Count::Insert),
            evictions: sum(Count::Eviction),
            expirations: sum(Count::Expiration),
        }
    }
}

/// This thread's stripe.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            // Relaxed: only distinctness matters.
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}
