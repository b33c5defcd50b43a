//! What a read returns.

use crate::cell::Version;
use crate::sync::StdArc;

/// An owned snapshot of one key's version. The value is shared with the store, not copied.
///
/// # Example
/// ```
/// use caskv::Store;
/// let store: Store<&str, u32> = Store::new();
/// let index = store.set_with_flags("k", 7, 3);
/// let entry = store.get("k").unwrap();
/// assert_eq!((*entry.value, entry.flags, entry.modify_index, entry.create_index), (7, 3, index, index));
/// ```
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry<V> {
    /// The value, shared with the store.
    pub value: StdArc<V>,
    /// Opaque client flags (0 unless set).
    pub flags: u64,
    /// The index of the write that produced this version.
    pub modify_index: u64,
    /// The index of the write that created the key; fixed until the key is deleted.
    pub create_index: u64,
}

/// A borrowed view of one key's version, valid while the [`Pinned`](crate::Pinned) handle it
/// came from lives. Reading through it touches no shared memory at all.
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
    shared: &'g StdArc<V>,
}

impl<V> Clone for Entry<V> {
    /// Shares the value: clones the `Arc`, never `V`.
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            flags: self.flags,
            modify_index: self.modify_index,
            create_index: self.create_index,
        }
    }
}

impl<V> Entry<V> {
    pub(crate) fn of(v: &Version<V>) -> Self {
        Entry {
            value: v.value.clone(),
            flags: v.flags,
            modify_index: v.modify_index,
            create_index: v.create_index,
        }
    }
}

impl<'g, V> EntryRef<'g, V> {
    pub(crate) fn of(v: &'g Version<V>) -> Self {
        EntryRef {
            value: &v.value,
            shared: &v.value,
            flags: v.flags,
            modify_index: v.modify_index,
            create_index: v.create_index,
        }
    }

    /// An owned copy of this view (the value is shared, not copied).
    pub fn to_entry(&self) -> Entry<V> {
        Entry {
            value: self.shared.clone(),
            flags: self.flags,
            modify_index: self.modify_index,
            create_index: self.create_index,
        }
    }
}
