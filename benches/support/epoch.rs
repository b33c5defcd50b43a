//! Shared by the bench binaries that include it with `#[path]`.

use std::time::{Duration, Instant};

/// Frees what earlier work retired and has not been reclaimed, so that no measurement pays
/// for an earlier one's garbage: this thread's garbage in caskv's collector (`caskv::reclaim`;
/// bench threads that exited left theirs to the next threads that register), and
/// crossbeam-epoch's global collector (moka's). Each crossbeam `flush` collects at most a few
/// bags; it stops once 256 flushes in a row find little to free.
pub fn settle_epoch() {
    caskv::reclaim();
    for _ in 0..1_000_000 {
        let start = Instant::now();
        for _ in 0..256 {
            crossbeam_epoch::pin().flush();
        }
        if start.elapsed() < Duration::from_micros(256) {
            break;
        }
    }
}
