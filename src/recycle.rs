//! Per-thread caches of node blocks, so that the steady-state write path neither mallocs nor
//! frees: the epoch collector hands a retired node's block to the cache of the thread that
//! collects it, and the next node that thread makes takes a block from there.
//!
//! Blocks come in size classes of 16 bytes (every node is 16-aligned, see `cell.rs`), up to
//! [`MAX_BLOCK`]; a node type larger than that (a large inline value) uses the allocator
//! directly. Each class keeps at most [`KEEP_BYTES`] of blocks per thread (at least
//! [`KEEP_MIN`] blocks); beyond that, and when the
//! thread exits, blocks go back to the allocator. A block is always allocated and deallocated
//! with its class's layout, whatever node type it held, so any node of the class can reuse it.
//!
//! Why: with the system allocator, every write's record and every delete's tomb was a `malloc`
//! and (after the epoch) a `free` of a small chunk, and the collector's larger allocations made
//! glibc consolidate those freed chunks again and again (`malloc_consolidate` and
//! `unlink_chunk` were a third of an insert/delete-heavy profile; see `BENCHMARKS.md`).
//!
//! Each thread's cache lives in its epoch participant ([`Blocks`]), so taking or keeping a
//! block is a `Vec` pop or push behind the participant pointer the thread-local already holds.
//!
//! Under loom the cache is off (nodes are plain allocations): the models check the cell
//! protocol, not this cache, and their participants are loom handles, not thread-locals.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};

/// The largest block kept; larger nodes use the allocator directly.
pub(crate) const MAX_BLOCK: usize = 256;
/// Bytes of blocks one thread keeps per size class: 8,192 tombs of a `u64` key (32 bytes), so
/// that the tombs a bounded store's rebuild frees at once (one per eviction since the last
/// rebuild) are kept for the evictions that follow, not handed to `free` and `malloc`ed again
/// one by one (a third of an evicting insert's instructions, `BENCHMARKS.md`).
#[cfg_attr(caskv_loom, allow(dead_code))]
const KEEP_BYTES: usize = 256 << 10;

/// Blocks one thread keeps per size class at least (the largest classes).
#[cfg_attr(caskv_loom, allow(dead_code))]
const KEEP_MIN: usize = 1024;
/// Size classes: 16, 32, …, `MAX_BLOCK` bytes.
#[cfg_attr(caskv_loom, allow(dead_code))]
const CLASSES: usize = MAX_BLOCK / 16;

/// The class layout a node of `layout` is allocated with, or `None` when it is not cached.
#[inline]
fn class_of(layout: Layout) -> Option<(usize, Layout)> {
    if layout.size() == 0 || layout.size() > MAX_BLOCK || layout.align() > 16 {
        return None;
    }
    let class = layout.size().div_ceil(16) - 1;
    Some((class, class_layout(class)))
}

/// One thread's cached blocks, by class: owned by the thread's epoch participant (the
/// collector frees retired nodes on the thread that retired them, so a write's block comes back
/// to its own thread), reached through the participant pointer a pin already loads, with no
/// thread-local state check and no borrow flag. Returned to the allocator when its thread
/// gives the participant up.
pub(crate) struct Blocks([Vec<*mut u8>; CLASSES]);

impl Blocks {
    pub(crate) const fn new() -> Self {
        Blocks([const { Vec::new() }; CLASSES])
    }

    /// A cached block of `class`, if there is one.
    #[cfg_attr(caskv_loom, allow(dead_code))]
    #[inline]
    fn take(&mut self, class: usize) -> Option<*mut u8> {
        self.0[class].pop()
    }

    /// Keeps `block`; `false` (the caller deallocates it) when the class is full.
    #[cfg_attr(caskv_loom, allow(dead_code))]
    #[inline]
    fn keep(&mut self, class: usize, block: *mut u8) -> bool {
        let blocks = &mut self.0[class];
        if blocks.len() < (KEEP_BYTES / (16 * (class + 1))).max(KEEP_MIN) {
            blocks.push(block);
            true
        } else {
            false
        }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        for (class, blocks) in self.0.iter_mut().enumerate() {
            let layout = class_layout(class);
            for block in blocks.drain(..) {
                // SAFETY: every cached block was allocated with its class's layout and is
                // owned by this cache alone.
                unsafe { dealloc(block, layout) };
            }
        }
    }
}

/// The layout every block of `class` is allocated and deallocated with.
fn class_layout(class: usize) -> Layout {
    // SAFETY: every class is below `CLASSES` (`class_of` bounds the size by `MAX_BLOCK`), so
    // `(class + 1) * 16 <= MAX_BLOCK`, a nonzero multiple of 16, and 16 is a power of two.
    unsafe { Layout::from_size_align_unchecked((class + 1) * 16, 16) }
}

#[cfg(not(caskv_loom))]
mod cache {
    /// A cached block of `class`, if this thread holds a participant and it has one.
    #[inline]
    pub(super) fn take(class: usize) -> Option<*mut u8> {
        crate::epoch::with_blocks(|b| b.take(class)).flatten()
    }

    /// Keeps `block` for reuse; `false` (the caller deallocates it) when the class is full or
    /// the thread holds no participant (it never pinned, or is exiting).
    #[inline]
    pub(super) fn keep(class: usize, block: *mut u8) -> bool {
        crate::epoch::with_blocks(|b| b.keep(class, block)).unwrap_or(false)
    }
}

#[cfg(caskv_loom)]
mod cache {
    #[inline]
    pub(super) fn take(_class: usize) -> Option<*mut u8> {
        None
    }

    #[inline]
    pub(super) fn keep(_class: usize, _block: *mut u8) -> bool {
        false
    }
}

/// Moves `node` to the heap, into a recycled block when one of its class is at hand.
#[inline]
pub(crate) fn boxed<T>(node: T) -> *mut T {
    let ptr = block(Layout::new::<T>()).cast::<T>();
    // SAFETY: `ptr` is a fresh block at least as large and as aligned as `T`, owned by us.
    unsafe { ptr.write(node) };
    ptr
}

/// A block for `layout` (nonzero size, alignment at most 16), from this thread's cache when
/// one of its class is at hand. Give it back with [`unblock`] and the same layout.
#[inline]
pub(crate) fn block(layout: Layout) -> *mut u8 {
    match class_of(layout).and_then(|(class, _)| cache::take(class)) {
        Some(block) => block,
        None => allocate(layout),
    }
}

/// A fresh block for a node of `layout`: of its class's layout when the class is cached (so
/// that any node of the class can reuse it), else of its own.
#[cold]
fn allocate(layout: Layout) -> *mut u8 {
    let ptr = match class_of(layout) {
        // SAFETY: the class layout has a nonzero size.
        Some((_, class_layout)) => unsafe { alloc(class_layout) },
        // Not cached: a plain allocation (a zero-sized node never occurs: every node holds a
        // hash or a status word).
        // SAFETY: `layout` has a nonzero size (the callers' contract).
        None => unsafe { alloc(layout) },
    };
    if ptr.is_null() {
        handle_alloc_error(layout);
    }
    ptr
}

/// Drops the node at `ptr` and recycles (or deallocates) its block.
///
/// # Safety
/// `ptr` came from [`boxed::<T>`] and nothing else can reach it; it is dropped once.
#[inline]
pub(crate) unsafe fn drop_boxed<T>(ptr: *mut T) {
    // SAFETY: the caller's contract: a live `T` that only we can reach.
    unsafe { std::ptr::drop_in_place(ptr) };
    // SAFETY: made by `boxed::<T>`, so by `block(Layout::new::<T>())`; given back once.
    unsafe { unblock(ptr.cast::<u8>(), Layout::new::<T>()) };
}

/// Recycles (or deallocates) a block whose contents were dropped.
///
/// # Safety
/// `block` came from [`block`] with this `layout`, nothing can reach it, and it is given back
/// once.
#[inline]
pub(crate) unsafe fn unblock(block: *mut u8, layout: Layout) {
    match class_of(layout) {
        Some((class, class_layout)) => {
            if !cache::keep(class, block) {
                // SAFETY: the block was allocated with its class's layout (see `allocate`).
                unsafe { dealloc(block, class_layout) };
            }
        }
        // SAFETY: an uncached block was allocated with its own layout (see `allocate`).
        None => unsafe { dealloc(block, layout) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_within_a_class_and_large_nodes_bypass_the_cache() {
        // The cache is the thread's participant's: register one.
        drop(crate::sync::epoch::pin());
        let a = boxed([1u64; 4]);
        let addr = a as usize;
        // SAFETY: `a` came from `boxed` and is dropped once.
        unsafe { drop_boxed(a) };
        // Another type of the same 32-byte class reuses the block.
        let b = boxed((7u128, 9u128));
        assert_eq!(b as usize, addr);
        // SAFETY: as above.
        unsafe { assert_eq!(*b, (7, 9)) };
        // SAFETY: as above.
        unsafe { drop_boxed(b) };
        let big = boxed([0u8; 1024]);
        // SAFETY: as above.
        unsafe { drop_boxed(big) };
    }

    #[test]
    fn values_with_drop_are_dropped_once() {
        let counted = std::sync::Arc::new(());
        let node = boxed((0u64, counted.clone()));
        assert_eq!(std::sync::Arc::strong_count(&counted), 2);
        // SAFETY: `node` came from `boxed` and is dropped once.
        unsafe { drop_boxed(node) };
        assert_eq!(std::sync::Arc::strong_count(&counted), 1);
    }
}
