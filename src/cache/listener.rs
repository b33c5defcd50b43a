//! The eviction listener: told of every entry the store deleted on its own (to keep its bound,
//! or because its time to live ran out), after the store let go of every lock it held.
//!
//! A removal is made where locks may be held (a policy shard's mutex during an eviction, a
//! batch's key locks when its lock step meets an expired version), so it is not delivered
//! there: it is kept in a [`Removed`], which delivers what it holds when it is dropped, and
//! every holder drops it only after letting go of its locks. A store without a listener keeps
//! nothing (no clone of a key or value is made).

use std::panic::{self, AssertUnwindSafe};

use crate::cell::Record;
use crate::entry::Entry;

/// Why the store deleted an entry on its own (given to an
/// [`eviction_listener`](crate::StoreBuilder::eviction_listener)).
///
/// Deletes and overwrites by callers are not reported: the caller made them and has what it
/// needs (the index of its write; [`Store::update`](crate::Store::update) and the CAS calls
/// give it the version it replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Evicted to keep the store within its bound.
    Capacity,
    /// Its time to live ran out (deleted by a write that met it, by
    /// [`Store::purge_expired`](crate::Store::purge_expired), or by the policy).
    Expired,
}

/// A store's eviction listener.
pub(crate) type Listener<K, V> = Box<dyn Fn(K, Entry<V>, RemovalCause) + Send + Sync>;

/// Removals not yet delivered to the listener: delivered, in the order made, when this is
/// dropped (its holder drops it after letting go of its locks). If the listener panics, the
/// rest are still delivered and the first panic then resumes (unless the thread is already
/// unwinding, when it is dropped: a listener's panic must not abort the process).
pub(crate) struct Removed<'e, K, V> {
    listener: Option<&'e Listener<K, V>>,
    pending: Vec<(K, Entry<V>, RemovalCause)>,
}

impl<'e, K, V> Removed<'e, K, V> {
    /// Nothing yet, for `listener` (`None`: keep nothing).
    pub(crate) fn new(listener: Option<&'e Listener<K, V>>) -> Self {
        Removed {
            listener,
            pending: Vec::new(),
        }
    }

    /// Keeps the removal of `record`'s version for the listener, if there is one.
    pub(crate) fn push(&mut self, record: &Record<K, V>, cause: RemovalCause)
    where
        K: Clone,
        V: Clone,
    {
        if self.listener.is_some() {
            self.pending
                .push((record.header.keyed.key.clone(), Entry::of(record), cause));
        }
    }
}

impl<K, V> Drop for Removed<'_, K, V> {
    #[inline]
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.deliver();
        }
    }
}

impl<K, V> Removed<'_, K, V> {
    /// Tells the listener of every pending removal (see [`Removed`]).
    #[cold]
    #[inline(never)]
    fn deliver(&mut self) {
        let Some(listener) = self.listener else {
            return;
        };
        let mut first_panic = None;
        for (key, entry, cause) in self.pending.drain(..) {
            // AssertUnwindSafe: the store's state does not depend on the listener; a listener
            // that panics leaves only its own state as the panic found it.
            if let Err(payload) =
                panic::catch_unwind(AssertUnwindSafe(|| listener(key, entry, cause)))
            {
                first_panic.get_or_insert(payload);
            }
        }
        if let Some(payload) = first_panic {
            if !std::thread::panicking() {
                panic::resume_unwind(payload);
            }
        }
    }
}
