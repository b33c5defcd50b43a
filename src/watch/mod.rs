//! Watches and the change feed: waiting for a key (or a prefix) to change, and reading every
//! committed mutation in index order.
//!
//! - [`Watch`] and [`PrefixWatch`] ([`Store::watch`], [`Store::watch_prefix`]): a blocking
//!   [`wait`](Watch::wait) or a runtime-agnostic [`changed`](Watch::changed) future, resolved
//!   once the key's (or prefix's) state has an index above the one asked for. Only writes to
//!   the key, or under the prefix, wake them (`waiters.rs`).
//! - [`Feed`] ([`Store::changes`], [`StoreBuilder::history`]): the committed mutations after
//!   an index, gap-free and in index order, from a bounded history (`feed.rs`).
//!
//! [`Store::watch`]: crate::Store::watch
//! [`Store::watch_prefix`]: crate::Store::watch_prefix
//! [`Store::changes`]: crate::Store::changes
//! [`StoreBuilder::history`]: crate::StoreBuilder::history

mod feed;
mod waiters;
mod watcher;

pub(crate) use feed::Skips;
pub use feed::{Compacted, Feed, FeedEvent, HistoryLimits};
pub(crate) use waiters::{Signal, Waiters};
pub(crate) use watcher::Wakeups;
pub use watcher::{Changed, Listing, PrefixWatch, Seen, Watch, WatchTarget};

use crate::entry::Entry;
use crate::journal::Mutation;
use crate::sync::StdArc;

/// One committed mutation, owned: what a store's feed holds ([`Store::changes`]).
///
/// Expiries and evictions are [`Delete`](Change::Delete)s at their own index, as they are
/// everywhere else.
///
/// # Example
/// ```
/// use caskv::{Change, HistoryLimits, Store};
/// let store: Store<&str, u32> = Store::builder().history(HistoryLimits::default()).build();
/// let set = store.set("k", 1);
/// let deleted = store.delete(&"k").unwrap();
/// let changes = store.changes(0).unwrap();
/// assert!(matches!(&*changes[0], Change::Set { key: "k", entry } if entry.modify_index == set));
/// assert!(matches!(&*changes[1], Change::Delete { key: "k", index } if *index == deleted));
/// ```
///
/// [`Store::changes`]: crate::Store::changes
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change<K, V> {
    /// The key now holds `entry` (its `modify_index` is the write's index).
    Set {
        /// The key written.
        key: K,
        /// The version written.
        entry: Entry<V>,
    },
    /// The key was deleted at `index` (by a caller, an expiry or an eviction).
    Delete {
        /// The key deleted.
        key: K,
        /// The delete's index.
        index: u64,
    },
    /// A batch committed at `index`: every key it changed, in key order, with its new version
    /// or `None` for a delete.
    Batch {
        /// The batch's one index.
        index: u64,
        /// The keys changed.
        writes: Vec<(K, Option<Entry<V>>)>,
    },
}

impl<K, V> Change<K, V> {
    /// The index the change was committed at.
    pub fn index(&self) -> u64 {
        match self {
            Change::Set { entry, .. } => entry.modify_index,
            Change::Delete { index, .. } | Change::Batch { index, .. } => *index,
        }
    }

    /// An owned copy of what a journal was handed.
    pub(crate) fn of(mutation: &Mutation<'_, K, V>) -> Self
    where
        K: Clone,
        V: Clone,
    {
        match mutation {
            Mutation::Set { key, entry } => Change::Set {
                key: (*key).clone(),
                entry: entry.to_entry(),
            },
            Mutation::Delete { key, index } => Change::Delete {
                key: (*key).clone(),
                index: *index,
            },
            Mutation::Batch { index, writes } => Change::Batch {
                index: *index,
                writes: writes
                    .iter()
                    .map(|(k, e)| ((*k).clone(), e.as_ref().map(|e| e.to_entry())))
                    .collect(),
            },
        }
    }
}

/// A change's weight is its inline size (and that of a batch's items); what the key and
/// value own on the heap is not seen by the library: a store of large values bounds its
/// history by `max_changes`, or keeps a [`Feed`] of its own event type that weighs them.
impl<K, V> FeedEvent for Change<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn index(&self) -> u64 {
        Change::index(self)
    }

    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                Change::Batch { writes, .. } => {
                    writes.len() * std::mem::size_of::<(K, Option<Entry<V>>)>()
                }
                _ => 0,
            }
    }
}

/// What a store hands its feed: every applied mutation (skips go through the index).
pub(crate) trait Observer<K, V>: Send + Sync {
    fn applied(&self, mutation: &Mutation<'_, K, V>);
}

/// A store's way into a [`Feed`] of `E`s: the feed, and how a [`Change`] of the store becomes
/// an `E`.
pub(crate) struct Reporter<K, V, E> {
    pub(crate) feed: StdArc<Feed<E>>,
    pub(crate) into: fn(Change<K, V>) -> E,
}

impl<K, V, E> Observer<K, V> for Reporter<K, V, E>
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: FeedEvent,
{
    fn applied(&self, mutation: &Mutation<'_, K, V>) {
        let change = Change::of(mutation);
        self.feed.report(change.index(), Some((self.into)(change)));
    }
}
