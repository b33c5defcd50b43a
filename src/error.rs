//! Errors of the store, written by hand so that each variant hands back what a caller needs to
//! retry or to report.

use std::fmt;

use crate::entry::Entry;

/// What a failed operation reports.
///
/// `K` is the store's key type and `V` its value type: a conflict hands back the key and the
/// current entry (value included), so a caller can retry without reading again.
///
/// # Example
/// ```
/// use caskv::Store;
/// let store: Store<String, String> = Store::new();
/// let first = store.set("k".to_string(), "v1".to_string());
/// store.set("k".to_string(), "v2".to_string());
/// let err = store.set_cas("k".to_string(), "v3".to_string(), first).unwrap_err();
/// assert!(err.is_conflict());
/// let conflict = err.conflict().unwrap();
/// assert_eq!(conflict.current_index(), Some(first + 1));
/// ```
///
/// It is a [`std::error::Error`] whenever `K: Debug` (values need no `Debug`: messages name
/// keys, as `Debug` writes them, and indices, never values), so `?` into `Box<dyn Error>` works
/// for any store whose key type derives `Debug`:
/// ```
/// # use caskv::Store;
/// struct Blob(Vec<u8>); // no Debug, no Display
/// impl Clone for Blob { fn clone(&self) -> Self { Blob(self.0.clone()) } }
/// fn run() -> Result<(), Box<dyn std::error::Error>> {
///     let store: Store<(u32, u32), Blob> = Store::new();
///     store.set_cas((1, 2), Blob(vec![1]), 0)?;
///     let err = store.set_cas((1, 2), Blob(vec![2]), 0).unwrap_err();
///     assert_eq!(err.to_string(), "CAS conflict for key (1, 2): expected absent (create-only), but current is 1");
///     Ok(())
/// }
/// # run().unwrap();
/// ```
#[non_exhaustive]
pub enum Error<K, V> {
    /// A single-key condition failed: the index or value the caller expected is not the
    /// current one.
    Conflict(Conflict<K, V>),
    /// The key is absent and the operation needs it present (get, delete, CAS with N ≥ 1).
    NotFound(K),
    /// A batch failed and changed nothing. Lists every failing operation, in key order.
    BatchConflict(Vec<Conflict<K, V>>),
    /// The batch held no operations.
    EmptyBatch,
    /// The batch held more operations than the store allows.
    BatchTooLarge {
        /// Operations submitted.
        len: usize,
        /// The store's bound ([`StoreBuilder::max_batch`](crate::StoreBuilder::max_batch)).
        max: usize,
    },
    /// The same key appeared twice in one batch.
    DuplicateKey(K),
    /// `delete_cas` with index 0: create-only has no meaning for a delete.
    CreateOnlyDelete(K),
    /// [`Store::update`](crate::Store::update) lost every attempt to concurrent writers.
    RetriesExhausted {
        /// The contended key.
        key: K,
        /// Attempts made.
        attempts: u32,
    },
    /// A persistent store's log failed (a write or an fsync returned an error): the write was
    /// refused, or was applied in memory but is not durable and was not acknowledged. Every
    /// later write fails the same way until the data directory is opened again.
    Storage(StorageError),
    /// A service write on a [`Db`](crate::Db) opened without services
    /// ([`Options::services`](crate::persist::Options::services)).
    NoServices,
    /// A persistent store cannot log an entry (or batch) this large.
    EntryTooLarge {
        /// Encoded bytes of the key and value (or of the whole batch).
        len: usize,
        /// The bound ([`persist::MAX_ENTRY_BYTES`](crate::persist::MAX_ENTRY_BYTES) per entry).
        max: usize,
    },
}

/// The log of a persistent store failed; see [`Error::Storage`]. Cloning shares the cause.
///
/// # Example
/// ```
/// use caskv::StorageError;
/// let e = StorageError::from(std::io::Error::other("disk full"));
/// assert!(e.to_string().contains("disk full"));
/// ```
#[derive(Debug, Clone)]
pub struct StorageError(std::sync::Arc<std::io::Error>);

impl StorageError {
    /// The I/O error the log met.
    pub fn io(&self) -> &std::io::Error {
        &self.0
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError(std::sync::Arc::new(e))
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the log failed, writes are refused until restart: {}",
            self.0
        )
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl<K, V> From<StorageError> for Error<K, V> {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

/// One failed condition: what the caller expected of `key` and what it found.
#[derive(Clone)]
#[non_exhaustive]
pub struct Conflict<K, V> {
    /// The key whose condition failed.
    pub key: K,
    /// The condition.
    pub expected: Expected,
    /// The key's entry when the condition was checked; `None` when it was absent.
    pub current: Option<Entry<V>>,
}

/// The condition a write carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// `modify_index` equal to this; 0 means "absent" (create-only).
    Index(u64),
    /// The key present, any version (a plain delete inside a batch).
    Present,
    /// Absent, for a value compare-and-set.
    Absent,
    /// A value equal to the one given, for a value compare-and-set.
    Value,
}

impl<K, V> Conflict<K, V> {
    /// The key's `modify_index` when the condition was checked; `None` when it was absent.
    pub fn current_index(&self) -> Option<u64> {
        self.current.as_ref().map(|e| e.modify_index)
    }

    /// Whether the key was absent although the condition needed it present: the "not found"
    /// flavour of a conflict.
    pub fn is_absent(&self) -> bool {
        self.current.is_none()
    }
}

impl<K, V> Error<K, V> {
    /// A CAS condition failed: a single-key conflict or a batch conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_) | Error::BatchConflict(_))
    }

    /// The key was absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// The request itself was malformed (empty, oversized, duplicate keys, delete with index 0).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            Error::EmptyBatch
                | Error::BatchTooLarge { .. }
                | Error::DuplicateKey(_)
                | Error::CreateOnlyDelete(_)
                | Error::EntryTooLarge { .. }
        )
    }

    /// The single-key conflict, if this is one.
    pub fn conflict(&self) -> Option<&Conflict<K, V>> {
        match self {
            Error::Conflict(c) => Some(c),
            _ => None,
        }
    }

    /// Every failed condition: one for a single-key conflict, all of them for a batch.
    pub fn conflicts(&self) -> &[Conflict<K, V>] {
        match self {
            Error::Conflict(c) => std::slice::from_ref(c),
            Error::BatchConflict(cs) => cs,
            _ => &[],
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Index(0) => f.write_str("absent (create-only)"),
            Expected::Index(n) => write!(f, "ModifyIndex {n}"),
            Expected::Present => f.write_str("present"),
            Expected::Absent => f.write_str("absent"),
            Expected::Value => f.write_str("the given value"),
        }
    }
}

impl<K: fmt::Debug, V> fmt::Display for Conflict<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CAS conflict for key {:?}: expected {}, but ",
            self.key, self.expected
        )?;
        match self.current_index() {
            Some(n) => write!(f, "current is {n}"),
            None => f.write_str("the key is absent"),
        }
    }
}

/// The key, the condition and the current index; not the value (which need not be `Debug`).
impl<K: fmt::Debug, V> fmt::Debug for Conflict<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conflict")
            .field("key", &self.key)
            .field("expected", &self.expected)
            .field("current_index", &self.current_index())
            .finish()
    }
}

impl<K: fmt::Debug, V> fmt::Display for Error<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Conflict(c) => fmt::Display::fmt(c, f),
            Error::NotFound(k) => write!(f, "key {k:?} not found"),
            Error::BatchConflict(cs) => {
                write!(f, "batch failed on {} key(s), nothing applied", cs.len())?;
                for c in cs {
                    write!(f, "; {c}")?;
                }
                Ok(())
            }
            Error::EmptyBatch => f.write_str("empty batch"),
            Error::BatchTooLarge { len, max } => {
                write!(f, "batch of {len} operations exceeds the limit of {max}")
            }
            Error::DuplicateKey(k) => write!(f, "key {k:?} appears more than once in the batch"),
            Error::CreateOnlyDelete(k) => {
                write!(
                    f,
                    "delete of key {k:?} with cas=0: create-only has no meaning for delete"
                )
            }
            Error::RetriesExhausted { key, attempts } => {
                write!(
                    f,
                    "update of key {key:?} gave up after {attempts} conflicting attempts"
                )
            }
            Error::Storage(e) => fmt::Display::fmt(e, f),
            Error::NoServices => {
                f.write_str("this database was opened without services (Options::services)")
            }
            Error::EntryTooLarge { len, max } => {
                write!(f, "{len} bytes to log exceed the limit of {max}")
            }
        }
    }
}

/// As `Display`, in `Debug`'s shape: keys and indices, never values.
impl<K: fmt::Debug, V> fmt::Debug for Error<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Conflict(c) => f.debug_tuple("Conflict").field(c).finish(),
            Error::NotFound(k) => f.debug_tuple("NotFound").field(k).finish(),
            Error::BatchConflict(cs) => f.debug_tuple("BatchConflict").field(cs).finish(),
            Error::EmptyBatch => f.write_str("EmptyBatch"),
            Error::BatchTooLarge { len, max } => f
                .debug_struct("BatchTooLarge")
                .field("len", len)
                .field("max", max)
                .finish(),
            Error::DuplicateKey(k) => f.debug_tuple("DuplicateKey").field(k).finish(),
            Error::CreateOnlyDelete(k) => f.debug_tuple("CreateOnlyDelete").field(k).finish(),
            Error::RetriesExhausted { key, attempts } => f
                .debug_struct("RetriesExhausted")
                .field("key", key)
                .field("attempts", attempts)
                .finish(),
            Error::Storage(e) => f.debug_tuple("Storage").field(e).finish(),
            Error::NoServices => f.write_str("NoServices"),
            Error::EntryTooLarge { len, max } => f
                .debug_struct("EntryTooLarge")
                .field("len", len)
                .field("max", max)
                .finish(),
        }
    }
}

impl<K: fmt::Debug, V> std::error::Error for Error<K, V> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Storage(e) => Some(e),
            _ => None,
        }
    }
}
