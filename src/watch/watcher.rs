//! [`Watch`] and [`PrefixWatch`]: wait until a key's (or a prefix's) state has an index above
//! a given one, blocking or as a future.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::entry::Entry;
use crate::store::Store;
use crate::sync::StdArc;

use super::Signal;

/// A key's state as a watch sees it: the entry (or `None` for an absent key) and the index of
/// that state: the entry's `modify_index`, or for an absent key the index of the delete that
/// removed it while the store still remembers it (a tomb in its table); else the highest
/// delete index the store forgot when a resize dropped tombs (0 if none: a key never written
/// in a store that never forgot a delete).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Seen<V> {
    /// The state's index.
    pub index: u64,
    /// The key's entry, `None` when absent.
    pub entry: Option<Entry<V>>,
}

impl<V> Seen<V> {
    pub(crate) fn absent(index: u64) -> Self {
        Seen { index, entry: None }
    }

    pub(crate) fn present(entry: Entry<V>) -> Self {
        Seen {
            index: entry.modify_index,
            entry: Some(entry),
        }
    }
}

/// A prefix's state as a watch sees it: the entries under it, sorted by key, and the highest
/// index that affected it among what the store remembers (versions present, deletes whose
/// tombs the table still holds, and the highest delete index it forgot).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing<K, V> {
    /// The highest index seen under the prefix (0 for a prefix that never held a key).
    pub index: u64,
    /// The entries under the prefix, sorted by key.
    pub entries: Vec<(K, Entry<V>)>,
}

/// Waits for one key to change ([`Store::watch`]).
///
/// Resolves once the key's state has an index above the watch's `after`, with that state; each
/// answer moves `after` to the answer's index, so the next wait is for the next change. Only
/// writes to this key wake it. An expiry is a delete, seen once something deletes it: a write
/// that meets the key, [`Store::purge_expired`], or this watch's own blocking
/// [`wait`](Watch::wait), which wakes at the deadline to delete it.
///
/// # Example
/// ```
/// use caskv::Store;
/// use std::time::Duration;
/// let store: Store<String, u32> = Store::new();
/// let first = store.set("k".to_string(), 1);
/// let mut watch = store.watch("k", first);
/// assert!(watch.wait(Duration::from_millis(10)).is_none()); // nothing changed
/// std::thread::scope(|s| {
///     s.spawn(|| store.set("k".to_string(), 2));
///     let seen = watch.wait(Duration::from_secs(10)).unwrap();
///     assert_eq!(seen.entry.unwrap().value, 2);
/// });
/// ```
pub struct Watch<'s, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    store: &'s Store<K, V>,
    key: K,
    hash: u64,
    after: u64,
    signal: StdArc<Signal>,
}

impl<'s, K, V> Watch<'s, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    pub(crate) fn new(store: &'s Store<K, V>, key: K, after: u64) -> Self {
        let hash = store.engine.raw.hash(&key);
        let signal = Signal::new();
        store.engine.waiters.add_key(hash, &signal);
        Watch {
            store,
            key,
            hash,
            after,
            signal,
        }
    }

    /// The index the next answer must be above.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The key's state now, if its index is above `after`; else the deadline of its version,
    /// if it has one (ms since the UNIX epoch).
    fn look(&mut self) -> Result<Seen<V>, u64> {
        let (seen, deadline) = self.store.engine.seen(&self.key);
        if seen.index > self.after {
            self.after = seen.index;
            Ok(seen)
        } else {
            Err(deadline)
        }
    }

    /// Blocks until the key changes (its state's index passes `after`) or `timeout` passes
    /// (`None`). A version with a deadline inside the wait is deleted when it comes, and that
    /// delete answers.
    pub fn wait(&mut self, timeout: Duration) -> Option<Seen<V>> {
        let until = Instant::now().checked_add(timeout);
        loop {
            let notified = self.signal.arm(None);
            let deadline = match self.look() {
                Ok(seen) => return Some(seen),
                Err(deadline) => deadline,
            };
            let mut wake = until;
            if deadline != 0 {
                let left = deadline.saturating_sub(self.store.engine.config.clock.now_ms());
                let at = Instant::now() + Duration::from_millis(left.saturating_add(1));
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if !self.signal.wait_past(notified, wake) && wake == until {
                return self.look().ok();
            }
        }
    }

    /// A future that resolves with the key's next state (as [`wait`](Watch::wait), without a
    /// timeout and without deleting an expired version itself). Needs no particular runtime:
    /// a write to the key wakes the task's `Waker`. Cancel it by dropping it.
    pub fn changed(&mut self) -> Changed<'_, Self> {
        Changed { watch: self }
    }
}

impl<K, V> Drop for Watch<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn drop(&mut self) {
        self.store
            .engine
            .waiters
            .remove_key(self.hash, &self.signal);
    }
}

impl<K, V> std::fmt::Debug for Watch<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + std::fmt::Debug + 'static,
    V: Clone + Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("key", &self.key)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// Waits for any key under a prefix to change ([`Store::watch_prefix`]): resolves once the
/// prefix's [`Listing`] has an index above `after`, or once a write under the prefix (a set, a
/// delete, a batch, an expiry or an eviction) was made after the watch was registered or last
/// answered, and moves `after` to the listing's index. Only writes under the prefix wake it.
/// (The second case matters: writes to different keys land in any order, so one can land
/// under an index already seen; its listing then answers with an unchanged index.)
///
/// # Example
/// ```
/// use caskv::Store;
/// use std::time::Duration;
/// let store: Store<String, u32> = Store::new();
/// store.set("other".to_string(), 0);
/// let mut watch = store.watch_prefix("app/", 0);
/// std::thread::scope(|s| {
///     s.spawn(|| store.set("app/x".to_string(), 1));
///     let listing = watch.wait(Duration::from_secs(10)).unwrap();
///     assert_eq!(listing.entries[0].0, "app/x");
/// });
/// ```
pub struct PrefixWatch<'s, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
    /// The registration; its count of wake-ups is the one at the last answer.
    wakeups: Wakeups<'s, K, V>,
    after: u64,
}

impl<'s, K, V> PrefixWatch<'s, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
    pub(crate) fn new(store: &'s Store<K, V>, prefix: &str, after: u64) -> Self {
        PrefixWatch {
            wakeups: Wakeups::new(store, prefix),
            after,
        }
    }

    /// The index the next answer must be above.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The listing, if its index passed `after` or a write under the prefix was made since
    /// the last answer (`notified`: the signal's count, taken before this look). The second
    /// case catches a write that took a lower index than one already seen and landed later
    /// (writes to different keys land in any order).
    fn look(&mut self, notified: u64) -> Option<Listing<K, V>> {
        let w = &mut self.wakeups;
        let listing = w.store.listing(&w.prefix);
        (listing.index > self.after || notified != w.seen).then(|| {
            self.after = self.after.max(listing.index);
            w.seen = notified;
            listing
        })
    }

    /// Blocks until the prefix changes or `timeout` passes (`None`).
    pub fn wait(&mut self, timeout: Duration) -> Option<Listing<K, V>> {
        let until = Instant::now().checked_add(timeout);
        loop {
            let notified = self.wakeups.signal.arm(None);
            if let Some(listing) = self.look(notified) {
                return Some(listing);
            }
            if !self.wakeups.signal.wait_past(notified, until) {
                let notified = self.wakeups.signal.arm(None);
                return self.look(notified);
            }
        }
    }

    /// A future that resolves with the prefix's next listing (as [`wait`](PrefixWatch::wait),
    /// without a timeout). Needs no particular runtime.
    pub fn changed(&mut self) -> Changed<'_, Self> {
        Changed { watch: self }
    }
}

impl<K, V> std::fmt::Debug for PrefixWatch<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixWatch")
            .field("prefix", &self.wakeups.prefix)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// A watch that [`Changed`] can poll: [`Watch`] or [`PrefixWatch`] (sealed).
pub trait WatchTarget: sealed::Sealed {
    /// What the watch answers with.
    type Output;
    #[doc(hidden)]
    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Self::Output>;
}

mod sealed {
    pub trait Sealed {}
}

/// The waker is kept before the look: a write after the look wakes it, one before it is what
/// the look sees (see `waiters.rs`).
fn poll_with<T>(signal: &Signal, cx: &Context<'_>, look: impl FnOnce(u64) -> Option<T>) -> Poll<T> {
    let notified = signal.arm(Some(cx.waker()));
    match look(notified) {
        Some(out) => Poll::Ready(out),
        None => Poll::Pending,
    }
}

impl<K, V> sealed::Sealed for Watch<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
}

impl<K, V> WatchTarget for Watch<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    type Output = Seen<V>;
    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Seen<V>> {
        let signal = self.signal.clone();
        poll_with(&signal, cx, |_| self.look().ok())
    }
}

impl<K, V> sealed::Sealed for PrefixWatch<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
}

impl<K, V> WatchTarget for PrefixWatch<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
    type Output = Listing<K, V>;
    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Listing<K, V>> {
        let signal = self.wakeups.signal.clone();
        poll_with(&signal, cx, |notified| self.look(notified))
    }
}

/// The future of [`Watch::changed`] and [`PrefixWatch::changed`].
#[must_use = "a future does nothing unless polled"]
#[derive(Debug)]
pub struct Changed<'w, W> {
    watch: &'w mut W,
}

impl<W: WatchTarget> Future for Changed<'_, W> {
    type Output = W::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<W::Output> {
        self.watch.poll_change(cx)
    }
}

/// A registration under a prefix that counts wake-ups and never looks at the state: what a
/// follower of the change feed sleeps on between two reads of the feed, and what a
/// [`PrefixWatch`] is made of (it lists the prefix at each wake-up). Dropping it deregisters.
pub(crate) struct Wakeups<'s, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
    store: &'s Store<K, V>,
    prefix: String,
    signal: StdArc<Signal>,
    /// The signal's count when the owner last acted on it (0: never; the signal is new, so
    /// any write after the registration counts).
    seen: u64,
}

impl<'s, K, V> Wakeups<'s, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
    pub(crate) fn new(store: &'s Store<K, V>, prefix: &str) -> Self {
        let signal = Signal::new();
        store
            .engine
            .waiters
            .add_prefix(prefix, &signal, |k: &K| k.as_ref());
        Wakeups {
            store,
            prefix: prefix.to_owned(),
            signal,
            seen: 0,
        }
    }

    /// Resolves once a write under the prefix was made after the previous wake-up (or after
    /// the registration).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) async fn next(&mut self) {
        std::future::poll_fn(|cx| {
            let count = self.signal.arm(Some(cx.waker()));
            if count != self.seen {
                self.seen = count;
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl<K, V> Drop for Wakeups<'_, K, V>
where
    K: Hash + Eq + Ord + Clone + Send + AsRef<str> + 'static,
    V: Clone + Send + 'static,
{
    fn drop(&mut self) {
        self.store
            .engine
            .waiters
            .remove_prefix(&self.prefix, &self.signal);
    }
}
