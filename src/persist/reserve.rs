//! Index reservations: the log records "no index up to N may be handed out again" before the
//! global counter passes N, so a restart resumes above every index ever handed out, even one
//! whose write was never made durable (a reader may have seen it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::frame;
use super::log::{Level, Log};
use super::record;
use crate::global_index::Reserve;

/// Indices reserved per log record: a reservation costs one fsync per this many writes, and a
/// restart skips at most this many indices.
pub(crate) const RESERVATION_BLOCK: u64 = 1 << 20;

/// The reserved ceiling of a persistent store's counter.
///
/// # Invariant
/// No index above `ceiling` is handed out, and `ceiling` is raised only after a reserve record
/// naming the new value is durable.
pub(crate) struct Reservation {
    ceiling: AtomicU64,
    extend: Mutex<()>,
    log: Arc<Log>,
}

impl Reservation {
    /// A reservation whose durable ceiling is `ceiling` (the recovered high-water mark).
    pub(crate) fn new(log: Arc<Log>, ceiling: u64) -> Self {
        Reservation {
            ceiling: AtomicU64::new(ceiling),
            extend: Mutex::new(()),
            log,
        }
    }

    /// The ceiling, read while no extension is in flight: every reservation whose record was
    /// appended before this call is included (a snapshot's high-water mark).
    pub(crate) fn settled_ceiling(&self) -> u64 {
        let _no_extension = self.extend.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: read under the lock every extension holds while it stores.
        self.ceiling.load(Ordering::Relaxed)
    }
}

impl Reserve for Arc<Reservation> {
    fn cover(&self, index: u64) {
        // Acquire: pairs with the Release below, so an index under the ceiling we read was
        // reserved by a record that is already durable.
        if index <= self.ceiling.load(Ordering::Acquire) {
            return;
        }
        let _one_extension = self.extend.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: under the lock, after any extension that stored before us.
        let current = self.ceiling.load(Ordering::Relaxed);
        if index <= current {
            return;
        }
        let through = index.max(current).saturating_add(RESERVATION_BLOCK);
        let mut payload = Vec::with_capacity(9);
        record::encode_reserve(&mut payload, through);
        let mut framed = Vec::with_capacity(payload.len() + frame::RECORD_OVERHEAD);
        frame::encode_record(&payload, &mut framed);
        let ticket = self.log.append(&framed);
        // A failure poisons the log (and is logged there): every write from now on is refused
        // or reported failed, so the index handed out below is never acknowledged.
        let _ = self.log.wait(ticket, Level::Synced);
        // Release: pairs with the Acquire above.
        self.ceiling.store(through, Ordering::Release);
    }
}
