//! Time to live: the clock a store reads deadlines against, and how a TTL becomes a deadline.
//!
//! A version's deadline is a wall-clock instant in milliseconds since the UNIX epoch (0: it
//! never expires), so that it means the same after a restart (the log records it). A version
//! whose deadline has come reads as absent at once; the first write that meets it (or
//! [`Store::purge_expired`](crate::Store::purge_expired)) replaces it with a delete at a fresh
//! index, so CAS, batches and the journal see an expiry as the delete it is.
//!
//! The clock is read only for versions that have a deadline: a store that never sets a TTL
//! never reads it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a store reads the time its deadlines are compared with.
///
/// The default is [`SystemClock`]; tests (and simulations) drive a [`ManualClock`] instead,
/// through [`StoreBuilder::clock`](crate::StoreBuilder::clock).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the UNIX epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
///
/// ```
/// use caskv::{Clock, SystemClock};
/// assert!(SystemClock.now_ms() > 1_600_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock set before 1970 reads as 1970: every deadline is then in the future.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to: time in tests without sleeps.
///
/// ```
/// use caskv::{ManualClock, Store};
/// use std::sync::Arc;
/// use std::time::Duration;
/// let clock = Arc::new(ManualClock::new(1_000_000));
/// let store: Store<&str, u32> = Store::builder().clock(clock.clone()).build();
/// store.set_with_ttl("session", 1, Duration::from_secs(30));
/// clock.advance(Duration::from_secs(29));
/// assert!(store.get("session").is_some());
/// clock.advance(Duration::from_secs(1));
/// assert!(store.get("session").is_none());
/// ```
#[derive(Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock that reads `ms` milliseconds since the UNIX epoch until moved.
    pub fn new(ms: u64) -> Self {
        ManualClock {
            ms: AtomicU64::new(ms),
        }
    }

    /// Moves the clock forward by `by` (whole milliseconds).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // Relaxed: the clock's reading is the only thing it publishes.
        let _ = self
            .ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |ms| {
                Some(ms.saturating_add(by))
            });
    }

    /// Sets the clock to `ms` milliseconds since the UNIX epoch.
    pub fn set(&self, ms: u64) {
        // Relaxed: as in `advance`.
        self.ms.store(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        // Relaxed: as in `advance`.
        self.ms.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("ms", &self.now_ms())
            .finish()
    }
}

/// The latest deadline a version can hold: 2^48 - 1 ms after 1970, in the year 10889.
pub(crate) const MAX_DEADLINE: u64 = (1 << 48) - 1;

/// The deadline of a version written at `now_ms` with `ttl`: 0 (never) for a zero TTL, else at
/// least one millisecond after `now_ms` (a TTL below a millisecond rounds up), at most
/// [`MAX_DEADLINE`].
pub(crate) fn deadline_after(now_ms: u64, ttl: Duration) -> u64 {
    if ttl.is_zero() {
        return 0;
    }
    let ms = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    now_ms.saturating_add(ms).clamp(1, MAX_DEADLINE)
}

/// Whether a version with `deadline` has expired at `now_ms`.
#[inline]
pub(crate) fn has_expired(deadline: u64, now_ms: u64) -> bool {
    deadline != 0 && now_ms >= deadline
}

/// A deadline as a wall-clock time (`None`: it never expires).
#[inline]
pub(crate) fn to_system_time(deadline: u64) -> Option<SystemTime> {
    (deadline != 0).then(|| UNIX_EPOCH + Duration::from_millis(deadline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_and_zero_means_never() {
        assert_eq!(deadline_after(1_000, Duration::ZERO), 0);
        assert_eq!(deadline_after(1_000, Duration::from_micros(1)), 1_001);
        assert_eq!(deadline_after(1_000, Duration::from_millis(30)), 1_030);
        assert_eq!(
            deadline_after(u64::MAX - 1, Duration::from_secs(1)),
            MAX_DEADLINE
        );
        assert!(!has_expired(0, u64::MAX));
        assert!(!has_expired(1_030, 1_029));
        assert!(has_expired(1_030, 1_030));
        assert_eq!(to_system_time(0), None);
        assert_eq!(
            to_system_time(1_500),
            Some(UNIX_EPOCH + Duration::from_millis(1_500))
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now_ms(), 5);
        c.advance(Duration::from_millis(10));
        assert_eq!(c.now_ms(), 15);
        c.set(3);
        assert_eq!(c.now_ms(), 3);
        c.advance(Duration::MAX);
        assert_eq!(c.now_ms(), u64::MAX);
    }
}
