//! What a read returns.

use std::time::SystemTime;

use crate::cell::Record;
use crate::expiry::to_system_time;

/// An owned snapshot of one key's version: a clone of the value and its metadata. For values
/// that are expensive to clone, store `Arc<T>` (a clone is then a reference-count increment),
/// or borrow through [`Store::get_with`](crate::Store::get_with) or
/// [`Pinned::get`](crate::Pinned::get).
///
/// # Example
/// ```
/// use caskv::Store;
/// let store: Store<&str, u32> = Store::new();
/// let index = store.set_with_flags("k", 7, 3);
/// let entry = store.get("k").unwrap();
/// assert_eq!((entry.value, entry.flags, entry.modify_index, entry.create_index), (7, 3, index, index));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry<V> {
    /// The value (a clone of the stored one).
    pub value: V,
    /// Opaque client flags (0 unless set).
    pub flags: u64,
    /// The index of the write that produced this version.
    pub modify_index: u64,
    /// The index of the write that created the key; fixed until the key is deleted.
    pub create_index: u64,
    /// When the version expires, in ms since the UNIX epoch (0: never); see
    /// [`expires_at`](Entry::expires_at).
    deadline: u64,
}

/// A borrowed view of one key's version, valid while the [`Pinned`](crate::Pinned) handle (or
/// the [`Store::get_with`](crate::Store::get_with) call) it came from lives. Reading through it
/// touches no shared memory at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryRef<'g, V> {
    /// The value.
    pub value: &'g V,
    /// Opaque client flags.
    pub flags: u64,
    /// The index of the write that produced this version.
    pub modify_index: u64,
    /// The index of the write that created the key.
    pub create_index: u64,
    /// As in [`Entry`].
    deadline: u64,
}

impl<V> Entry<V> {
    /// When this version expires (`None`: never); see
    /// [`Store::set_with_ttl`](crate::Store::set_with_ttl).
    pub fn expires_at(&self) -> Option<SystemTime> {
        to_system_time(self.deadline)
    }
}

impl<V> Entry<V> {
    /// A version as written: `value` with its flags, indices and deadline.
    pub(crate) fn new(
        value: V,
        flags: u64,
        modify_index: u64,
        create_index: u64,
        deadline: u64,
    ) -> Self {
        Entry {
            value,
            flags,
            modify_index,
            create_index,
            deadline,
        }
    }
}

impl<V> Entry<V> {
    /// This entry with its value mapped by `f` (a recovered registration into its `Arc`).
    pub(crate) fn map_value<W>(self, f: impl FnOnce(V) -> W) -> Entry<W> {
        Entry {
            value: f(self.value),
            flags: self.flags,
            modify_index: self.modify_index,
            create_index: self.create_index,
            deadline: self.deadline,
        }
    }
}

impl<V: Clone> Entry<V> {
    #[inline]
    pub(crate) fn of<K>(r: &Record<K, V>) -> Self {
        Entry {
            value: r.value.clone(),
            flags: r.header.meta.flags,
            modify_index: r.header.meta.modify_index,
            create_index: r.header.meta.create_index,
            deadline: r.life.deadline(),
        }
    }
}

impl<'g, V> EntryRef<'g, V> {
    #[inline]
    pub(crate) fn of<K>(r: &'g Record<K, V>) -> Self {
        EntryRef {
            value: &r.value,
            flags: r.header.meta.flags,
            modify_index: r.header.meta.modify_index,
            create_index: r.header.meta.create_index,
            deadline: r.life.deadline(),
        }
    }

    /// When this version expires (`None`: never).
    pub fn expires_at(&self) -> Option<SystemTime> {
        to_system_time(self.deadline)
    }

    /// The deadline as stored (ms since the UNIX epoch, 0: never), for the log.
    pub(crate) fn deadline(&self) -> u64 {
        self.deadline
    }

    /// An owned copy of this view (the value cloned).
    pub fn to_entry(&self) -> Entry<V>
    where
        V: Clone,
    {
        Entry {
            value: self.value.clone(),
            flags: self.flags,
            modify_index: self.modify_index,
            create_index: self.create_index,
            deadline: self.deadline,
        }
    }
}
