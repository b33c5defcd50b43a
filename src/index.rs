//! The key → cell map.
//!
//! In normal builds this is a [papaya] map holding cells inline: lookups are lock-free and write
//! no shared memory, which keeps hot reads scaling with threads (the figures behind this choice
//! are in `ARCHITECTURE.md` and `benches/index.rs`). papaya is not loom-aware, so under
//! `--cfg caskv_loom` a `Mutex<HashMap<K, Arc<Cell>>>` stands in: the map is not what the loom
//! models check, the cell and batch protocols above it are, and they run unchanged.
//!
//! # Invariant
//! At most one cell per key is linked at a time, and a cell is unlinked only after it is
//! `RETIRED` ([`Index::unlink`] removes the entry only if it is still that same cell).

use std::borrow::Borrow;
use std::hash::Hash;

use crate::cell::Cell;
use crate::sync::epoch;

#[cfg(not(caskv_loom))]
mod imp {
    use super::*;

    type Hasher = foldhash::fast::RandomState;

    pub(crate) struct Index<K, V> {
        map: papaya::HashMap<K, Cell<V>, Hasher>,
    }

    /// A pinned view: the epoch guard for version nodes and papaya's guard for cells.
    pub(crate) struct Pin<'s> {
        pub(crate) epoch: epoch::Guard,
        map: papaya::LocalGuard<'s>,
    }

    /// A borrowed cell, valid while the [`Pin`] it came from lives.
    pub(crate) type CellRef<'g, V> = &'g Cell<V>;

    impl<K: Hash + Eq, V> Index<K, V> {
        pub(crate) fn new() -> Self {
            Index {
                map: papaya::HashMap::builder().hasher(Hasher::default()).build(),
            }
        }

        pub(crate) fn pin(&self) -> Pin<'_> {
            Pin {
                epoch: epoch::pin(),
                map: self.map.guard(),
            }
        }

        pub(crate) fn get<'g, Q>(&'g self, key: &Q, pin: &'g Pin<'_>) -> Option<CellRef<'g, V>>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.map.get(key, &pin.map)
        }

        pub(crate) fn get_or_insert_vacant<'g>(
            &'g self,
            key: K,
            pin: &'g Pin<'_>,
        ) -> CellRef<'g, V> {
            // `try_insert`, not `get_or_insert_with`: in papaya 0.2.5 the latter never helps a
            // resize in progress finish, so a map grown only through it keeps unfinished resizes
            // and long probe chains, and every later lookup pays for them (measured: 266 ns vs
            // 10.6 ns for a hot pinned get at 10K keys; see BENCHMARKS.md).
            match self.map.try_insert(key, Cell::vacant(), &pin.map) {
                Ok(cell) => cell,
                Err(occupied) => occupied.current,
            }
        }

        /// Unlinks `cell` if it is still the one linked for `key`.
        pub(crate) fn unlink<Q>(&self, key: &Q, cell: &CellRef<'_, V>, pin: &Pin<'_>)
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let cell: &Cell<V> = cell;
            let _ = self
                .map
                .remove_if(key, |_, linked| std::ptr::eq(linked, cell), &pin.map);
        }

        pub(crate) fn for_each<'g>(
            &'g self,
            pin: &'g Pin<'_>,
            mut f: impl FnMut(&'g K, &'g Cell<V>),
        ) {
            for (k, c) in self.map.iter(&pin.map) {
                f(k, c);
            }
        }
    }
}

#[cfg(caskv_loom)]
mod imp {
    use super::*;
    use crate::sync::{Arc, Mutex};
    use std::collections::HashMap;
    use std::marker::PhantomData;

    /// Under loom the index owns the stand-in collector (see `sync::epoch`): retired nodes are
    /// freed when the index is dropped, after its cells.
    pub(crate) struct Index<K, V> {
        map: Mutex<HashMap<K, Arc<Cell<V>>>>,
        garbage: std::sync::Arc<epoch::Garbage>,
    }

    pub(crate) struct Pin<'s> {
        pub(crate) epoch: epoch::Guard,
        _map: PhantomData<&'s ()>,
    }

    pub(crate) type CellRef<'g, V> = Arc<Cell<V>>;

    impl<K: Hash + Eq, V> Index<K, V> {
        pub(crate) fn new() -> Self {
            Index {
                map: Mutex::new(HashMap::new()),
                garbage: Default::default(),
            }
        }

        pub(crate) fn pin(&self) -> Pin<'_> {
            Pin {
                epoch: epoch::Guard::new(self.garbage.clone()),
                _map: PhantomData,
            }
        }

        fn lock(&self) -> crate::sync::MutexGuard<'_, HashMap<K, Arc<Cell<V>>>> {
            // A poisoned stand-in map only happens after a panic in a loom model, which fails
            // the model anyway; keep going with the data.
            self.map.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(crate) fn get<Q>(&self, key: &Q, _pin: &Pin<'_>) -> Option<CellRef<'static, V>>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.lock().get(key).cloned()
        }

        pub(crate) fn get_or_insert_vacant(&self, key: K, _pin: &Pin<'_>) -> CellRef<'static, V> {
            self.lock()
                .entry(key)
                .or_insert_with(|| Arc::new(Cell::vacant()))
                .clone()
        }

        pub(crate) fn unlink<Q>(&self, key: &Q, cell: &Cell<V>, _pin: &Pin<'_>)
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let mut map = self.lock();
            if map
                .get(key)
                .is_some_and(|linked| std::ptr::eq(&**linked, cell))
            {
                map.remove(key);
            }
        }

        pub(crate) fn for_each(&self, _pin: &Pin<'_>, mut f: impl FnMut(&K, &Cell<V>)) {
            for (k, c) in self.lock().iter() {
                f(k, c);
            }
        }
    }
}

pub(crate) use imp::{CellRef, Index, Pin};
