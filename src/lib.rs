//! # caskv
//!
//! A concurrent in-memory key-value store with compare-and-swap at its heart. Every entry
//! carries a `modify_index` and a `create_index` drawn from one global, strictly increasing
//! counter ([`GlobalIndex`]); single-key operations run on per-key atomic version cells with no
//! global lock; batches are all-or-nothing.
//!
//! ## Usage
//! ```
//! use caskv::{Op, Store};
//!
//! let store: Store<String, String> = Store::new();
//! let index = store.set("config/app".into(), "v1".to_string());
//!
//! // Optimistic concurrency: update only if nobody wrote since we read.
//! let entry = store.get("config/app").unwrap();
//! let next = store.set_cas("config/app".into(), "v2".to_string(), entry.modify_index).unwrap();
//! assert!(next > index);
//!
//! // A stale index is a conflict that hands back the current entry.
//! let err = store.set_cas("config/app".into(), "v3".to_string(), index).unwrap_err();
//! assert_eq!(err.conflict().unwrap().current_index(), Some(next));
//!
//! // A batch commits every operation at one index, or none of them.
//! let at = store.batch(vec![
//!     Op::set_cas("config/app".into(), "v3".to_string(), next),
//!     Op::set_cas("config/db".into(), "pg".to_string(), 0),
//! ]).unwrap();
//! assert_eq!(store.get("config/db").unwrap().modify_index, at);
//! ```
//!
//! ## Consistency
//! - Every single-key operation (get, set, set_cas, delete, delete_cas, compare_and_set) is
//!   **linearizable**. Reads are lock-free and never wait for a writer. [`Store::get`] makes no
//!   atomic read-modify-write (its epoch pin is a plain store to the thread's own word, see
//!   `ARCHITECTURE.md`) and clones the value out; through a held [`Store::pin`] handle a read
//!   writes nothing and clones nothing. (A bounded store, a cache, also counts each read and
//!   bumps the entry's frequency hint: [`StoreBuilder::max_entries`].)
//! - Values are stored inline, next to their key and indices, one allocation per version. Store
//!   an `Arc<T>` to share a large value with readers instead of cloning it.
//! - Per key, `modify_index` strictly increases; `create_index` is fixed from creation until
//!   deletion. Indices are unique across the store and never reused; indices consumed by lost
//!   races leave gaps.
//! - A **batch** is atomic: it becomes visible at one instant, all keys at one `modify_index`.
//!   No reader, not even one making several reads in sequence, sees part of it.
//! - Listings ([`Store::keys`], [`Store::entries`], [`Store::len`]) are weakly consistent: not a
//!   snapshot; a key present throughout the call is listed, one written during it may or may not
//!   be.
//! - Index order across *different* keys is the order indices were taken, which can differ
//!   from the order their writes became visible (two writers take 7 and 8; 8 may land first).
//!
//! ## CAS semantics
//! `set_cas(k, v, 0)` creates only if absent; `set_cas(k, v, N)` writes only if `modify_index`
//! is N (absent → [`Error::NotFound`]); `delete_cas(k, 0)` is an invalid argument.
//! [`Store::compare_and_set`] compares values (absent matches absent) and reports a failed
//! compare with the current entry. Retry closures ([`Store::update`]) must be pure.
//!
//! ## Batch semantics
//! [`Store::batch`] takes any mix of [`Op`]s, locks their keys in key order, validates every
//! condition, then applies all of them behind one commit point. Empty batches, batches over the
//! bound (default 1000), duplicate keys and `delete_cas` with 0 are rejected before anything is
//! locked; a failed condition reports every failing key.

#![warn(missing_docs)]

mod batch;
mod cache;
mod cell;
mod db;
pub mod defaults;
mod engine;
mod entry;
#[cfg(caskv_loom)]
#[doc(hidden)]
pub mod epoch;
#[cfg(not(caskv_loom))]
mod epoch;
mod error;
mod expiry;
mod global_index;
mod journal;
pub mod persist;
mod recycle;
mod registry;
mod store;
mod sync;
mod table;
mod watch;

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod server;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use batch::Op;
pub use cache::{CacheStats, RemovalCause};
pub use db::{Db, DbChange};
pub use entry::{Entry, EntryRef};
pub use error::{Conflict, Error, Expected, StorageError};
pub use expiry::{Clock, ManualClock, SystemClock};
pub use global_index::GlobalIndex;
pub use journal::{Journal, Mutation};
pub use persist::Pending;
pub use registry::{Registration, Registry, RegistryError, Service, ServiceEntry};
pub use store::{Pinned, Store, StoreBuilder};
pub use watch::{
    Change, Changed, Compacted, Feed, FeedEvent, HistoryLimits, Listing, PrefixWatch, Seen, Watch,
    WatchTarget,
};

/// Frees what the calling thread has retired (values replaced or deleted, through any
/// store), as far as other threads' pins allow, and returns how many retired nodes it still
/// holds.
///
/// Never needed for correctness: a thread's operations free a couple of its expired nodes per
/// write as they go (at the start of each call, where no lock is held), and garbage of exited
/// threads is adopted by the others. Call it where a thread that wrote a lot goes idle, or
/// before measuring memory. Frees nothing while the calling thread holds a
/// [`Pinned`](crate::Pinned) handle (its own pin holds the garbage back).
///
/// ```
/// let store: caskv::Store<u64, String> = caskv::Store::new();
/// store.set(1, "a".to_string());
/// store.set(1, "b".to_string()); // retires "a"
/// assert_eq!(caskv::reclaim(), 0); // no other thread is pinned: "a" is freed
/// ```
#[cfg(not(caskv_loom))]
pub fn reclaim() -> usize {
    epoch::reclaim()
}
