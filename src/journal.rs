//! The [`Journal`] hook: how a store hands every committed mutation, in per-key order, to
//! whatever makes it durable (the `persist` log) or ships it elsewhere.
//!
//! # Per-key order
//! A journaled store calls [`Journal::record`] while the key is still **settling**: the write is
//! already visible to readers, but every other writer of the key (single-key or batch) waits
//! until `record` has returned. So for any one key the journal receives mutations in exactly
//! the order they were applied in memory, which is also `modify_index` order. Mutations of
//! different keys reach the journal concurrently, in no promised order.
//!
//! See `ARCHITECTURE.md` ("The journal protocol") for the cell states involved.

use crate::entry::EntryRef;

/// One committed mutation, as a [`Journal`] receives it.
///
/// A `Set` carries the whole resulting version (value, flags, both indices), never the
/// operation that produced it, so replaying the last mutation of a key restores it exactly.
#[derive(Debug)]
#[non_exhaustive]
pub enum Mutation<'a, K, V> {
    /// The key now holds `entry`.
    Set {
        /// The key written.
        key: &'a K,
        /// The version written (its `modify_index` is the write's index).
        entry: EntryRef<'a, V>,
    },
    /// The key was deleted at `index`.
    Delete {
        /// The key deleted.
        key: &'a K,
        /// The index the delete took.
        index: u64,
    },
    /// A batch committed at `index`: every key it changed, with its new version or `None` for
    /// a delete, in key order. Keys a batch only checked are not listed.
    Batch {
        /// The batch's one index.
        index: u64,
        /// The keys changed.
        writes: &'a [(&'a K, Option<EntryRef<'a, V>>)],
    },
}

/// Receives a store's committed mutations in per-key order (see the [module docs](self)).
///
/// `record` runs while other writers of the same key wait, so it must be short and must not
/// write to the same store; it must not block on I/O. It returns a ticket that the journal
/// itself can later use to tell when the mutation is durable (the `persist` log returns the
/// record's end offset).
///
/// # Example
/// ```
/// use caskv::{Journal, Mutation, Store};
/// use std::sync::Mutex;
///
/// #[derive(Default)]
/// struct Changes(Mutex<Vec<(String, u64)>>);
/// impl Journal<String, u32> for Changes {
///     fn record(&self, m: Mutation<'_, String, u32>) -> u64 {
///         let mut log = self.0.lock().unwrap();
///         match m {
///             Mutation::Set { key, entry } => log.push((key.clone(), entry.modify_index)),
///             Mutation::Delete { key, index } => log.push((key.clone(), index)),
///             Mutation::Batch { index, writes } => {
///                 log.extend(writes.iter().map(|(k, _)| ((*k).clone(), index)))
///             }
///             _ => {}
///         }
///         log.len() as u64
///     }
/// }
///
/// let changes = std::sync::Arc::new(Changes::default());
/// let store: Store<String, u32> = Store::builder().build_journaled(Box::new(changes.clone()));
/// let a = store.set("k".into(), 1);
/// let b = store.delete("k").unwrap();
/// assert_eq!(*changes.0.lock().unwrap(), [("k".to_string(), a), ("k".to_string(), b)]);
/// ```
pub trait Journal<K, V>: Send + Sync {
    /// Takes one committed mutation; returns the journal's ticket for it.
    fn record(&self, mutation: Mutation<'_, K, V>) -> u64;
}

impl<K, V, J: Journal<K, V> + ?Sized> Journal<K, V> for std::sync::Arc<J> {
    fn record(&self, mutation: Mutation<'_, K, V>) -> u64 {
        (**self).record(mutation)
    }
}

/// What a single-key write path hands back inside the crate: the index it took and, on a
/// journaled store, the journal's ticket for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) index: u64,
    pub(crate) ticket: Option<u64>,
}
