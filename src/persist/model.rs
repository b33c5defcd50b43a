//! The loom models' way in (`loom-tests/tests/group_commit.rs`): the real [`Log`] and its
//! [`Pending`], over an in-memory segment that records how far it was written and synced.
//! Built only under `--cfg caskv_loom`; not an API.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::log::{Log, SegmentFile};
use super::{FsyncPolicy, Pending};

/// The in-memory segment's record of what reached it. Its counters are plain std atomics: the
/// disk is not part of the protocol under test, and loom runs one thread at a time.
#[derive(Debug, Default)]
pub struct MemoryDisk {
    written: AtomicU64,
    synced: AtomicU64,
    failing: AtomicBool,
}

impl MemoryDisk {
    /// Stream bytes handed to the segment.
    pub fn written(&self) -> u64 {
        // SeqCst: a test's check; see the type's docs.
        self.written.load(Ordering::SeqCst)
    }

    /// Stream bytes the segment has synced.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::SeqCst)
    }

    /// Every later append and sync fails.
    pub fn fail_from_now(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }
}

struct MemorySegment(Arc<MemoryDisk>);

impl SegmentFile for MemorySegment {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.0.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("the disk failed"));
        }
        self.0
            .written
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.0.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("the disk failed"));
        }
        let written = self.0.written.load(Ordering::SeqCst);
        self.0.synced.store(written, Ordering::SeqCst);
        Ok(())
    }
}

/// The real log (flusher thread included) over a [`MemoryDisk`].
pub struct ModelLog {
    log: Arc<Log>,
}

impl ModelLog {
    /// Starts a log with `policy` over `disk`.
    pub fn new(policy: FsyncPolicy, disk: &Arc<MemoryDisk>) -> ModelLog {
        let log = Log::over(policy, Box::new(MemorySegment(disk.clone())))
            .expect("the flusher thread starts");
        ModelLog { log: Arc::new(log) }
    }

    /// Appends `len` bytes as one record; the [`Pending`] resolves to its ticket (the stream
    /// position just past it).
    pub fn append(&self, len: usize) -> Pending<u64> {
        let ticket = self.log.append(&vec![0x5a; len]);
        Pending::logged(ticket, Some(ticket), self.log.clone())
    }

    /// The stream position at the end of everything appended so far (sync markers included).
    pub fn appended(&self) -> u64 {
        self.log.appended()
    }
}
