//! The append-only log: an in-memory tail that writers append framed records to, and a group
//! commit that hands it to the current segment file.
//!
//! # Positions and tickets
//! Every appended byte has a position in one stream that runs across segments (an LSN). A
//! journaled write gets as its ticket the position just past its record. `written` and `synced`
//! are the positions up to which the stream has been handed to the OS and made durable.
//!
//! # Group commit
//! A writer that must wait for its ticket becomes the **leader** if no flush is running: it
//! takes the whole in-memory tail (its own record and everything appended before and since),
//! writes it with one `write`, syncs it if its policy needs that, and publishes the new
//! positions. Writers that arrive meanwhile wait on a condition variable and are usually
//! covered when the leader finishes; the first of them still uncovered leads the next round.
//! So one fsync serves every writer whose record was appended before the leader took the tail.
//!
//! # Sync markers
//! After each successful sync the next round first appends a marker record naming the segment
//! offset up to which the file is known durable. Recovery uses the last intact marker to tell
//! damage in the region that was never synced (a torn tail, whatever its shape: pages of an
//! unsynced write reach the disk in any order) from damage in data that was synced (corruption).
//!
//! # Failure
//! A failed write or sync poisons the log: every waiter, present and future, gets the error, and
//! the persistent store refuses new writes. Nothing is retried: after a failed fsync the kernel
//! may have dropped the dirty pages, so a later successful fsync proves nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use super::frame::{self, FileKind};
use super::record;
use crate::error::StorageError;

/// When a write is acknowledged relative to the disk.
///
/// | policy | a write returns once | lost on a process crash (`kill -9`) | lost on power loss |
/// |---|---|---|---|
/// | `Always` | its record is fsynced | nothing | nothing |
/// | `EverySec` | its record is written to the OS | nothing | about the last second |
/// | `Never` | its record is written to the OS | nothing | what the OS had not flushed (Linux: up to ~30 s) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Fsync before acknowledging; concurrent writers share fsyncs (group commit).
    #[default]
    Always,
    /// Write before acknowledging; fsync once a second in the background.
    EverySec,
    /// Write before acknowledging; never fsync (except on rotation, snapshot and close).
    Never,
}

/// A segment file as the log uses it. The real one is a [`std::fs::File`]; the power-loss
/// tests put a stand-in here that forgets every byte not yet synced.
pub(crate) trait SegmentFile: Send {
    /// Appends `bytes`.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes every appended byte durable.
    fn sync(&mut self) -> io::Result<()>;
}

impl SegmentFile for std::fs::File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Creates a new, empty segment file at a path (the file must not exist).
pub(crate) type CreateSegment =
    Arc<dyn Fn(&Path) -> io::Result<Box<dyn SegmentFile>> + Send + Sync>;

/// The default [`CreateSegment`]: a real file, opened for appending.
pub(crate) fn create_file(path: &Path) -> io::Result<Box<dyn SegmentFile>> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)?;
    Ok(Box::new(file))
}

/// The path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("log-{seq:016x}.caskv"))
}

/// Fsyncs a directory, so that a file created or renamed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The log. See the module docs.
pub(crate) struct Log {
    dir: PathBuf,
    policy: FsyncPolicy,
    create: CreateSegment,
    state: Mutex<State>,
    /// Signalled whenever a flush round ends (positions moved, or the log failed).
    progress: Condvar,
    /// Stream position handed to the OS.
    written: AtomicU64,
    /// Stream position known durable.
    synced: AtomicU64,
    failed: OnceLock<StorageError>,
}

struct State {
    /// Appended, not yet taken by a leader.
    tail: Vec<u8>,
    /// A cleared buffer to swap in for `tail` (saves an allocation per round).
    spare: Vec<u8>,
    /// Stream position at the end of `tail`.
    appended: u64,
    /// A leader is writing; `file` is out with it.
    flushing: bool,
    file: Option<Box<dyn SegmentFile>>,
    /// The current segment's number.
    seq: u64,
    /// Bytes in the current segment file, header included (as the leader has written them).
    segment_len: u64,
    /// A segment offset known durable that no marker has recorded yet.
    unmarked_sync: Option<u64>,
}

/// Whether a flush round must sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Handed to the OS.
    Written,
    /// Durable.
    Synced,
}

impl Log {
    /// Starts a log in a new segment `seq` (which must not exist yet) of `dir`.
    pub(crate) fn create(
        dir: &Path,
        seq: u64,
        policy: FsyncPolicy,
        create: CreateSegment,
    ) -> io::Result<Log> {
        let file = new_segment(dir, seq, &create)?;
        Ok(Log {
            dir: dir.to_path_buf(),
            policy,
            create,
            state: Mutex::new(State {
                tail: Vec::new(),
                spare: Vec::new(),
                appended: 0,
                flushing: false,
                file: Some(file),
                seq,
                segment_len: frame::HEADER_LEN as u64,
                unmarked_sync: None,
            }),
            progress: Condvar::new(),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            failed: OnceLock::new(),
        })
    }

    /// The fsync policy.
    #[cfg(feature = "server")]
    pub(crate) fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// What a writer waits for under this log's policy.
    pub(crate) fn ack_level(&self) -> Level {
        match self.policy {
            FsyncPolicy::Always => Level::Synced,
            FsyncPolicy::EverySec | FsyncPolicy::Never => Level::Written,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state consistent (every update is a plain
        // assignment after the I/O), so a poisoned lock is taken over.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error that poisoned the log, if one did.
    pub(crate) fn failure(&self) -> Option<StorageError> {
        self.failed.get().cloned()
    }

    /// Poisons the log with `e` (a record it must not write); returns a ticket never reached.
    pub(crate) fn fail(&self, e: io::Error) -> u64 {
        tracing::error!(error = %e, "caskv: the log cannot take a record; refusing every write until restart");
        let _ = self.failed.set(StorageError::from(e));
        let _st = self.lock();
        self.progress.notify_all();
        u64::MAX
    }

    /// Appends one framed record (see `frame::encode_record`); returns its ticket.
    pub(crate) fn append(&self, framed: &[u8]) -> u64 {
        let mut st = self.lock();
        st.tail.extend_from_slice(framed);
        st.appended += framed.len() as u64;
        st.appended
    }

    /// Stream position at the end of everything appended so far.
    pub(crate) fn appended(&self) -> u64 {
        self.lock().appended
    }

    fn reached(&self, ticket: u64, level: Level) -> bool {
        let at = match level {
            // Acquire: pairs with the Release in `finish_round`; the position is only a
            // number, but reading it after the leader's store keeps the wait monotonic.
            Level::Written => self.written.load(Ordering::Acquire),
            Level::Synced => self.synced.load(Ordering::Acquire),
        };
        at >= ticket
    }

    /// Blocks until the stream is at `level` up to `ticket`, leading flush rounds as needed.
    pub(crate) fn wait(&self, ticket: u64, level: Level) -> Result<(), StorageError> {
        if self.reached(ticket, level) {
            return Ok(());
        }
        let mut st = self.lock();
        loop {
            if self.reached(ticket, level) {
                return Ok(());
            }
            if let Some(e) = self.failed.get() {
                return Err(e.clone());
            }
            if st.flushing {
                st = self.progress.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st = self.lead(st, level);
        }
    }

    /// For an async caller that must not wait on a condition variable: if `ticket` only needs
    /// to be handed to the OS and no flush is running, leads one round right here (a `write`,
    /// no fsync) and returns whether that covered it; returns `false` without waiting
    /// otherwise. The caller then waits with [`wait`](Log::wait) on a blocking thread.
    #[cfg(feature = "server")]
    pub(crate) fn try_write_now(&self, ticket: u64) -> bool {
        if self.reached(ticket, Level::Written) {
            return true;
        }
        let Ok(st) = self.state.try_lock() else {
            return false;
        };
        if st.flushing || self.failed.get().is_some() {
            return false;
        }
        drop(self.lead(st, Level::Written));
        self.reached(ticket, Level::Written)
    }

    /// Whether `ticket` is at `level` already (never blocks, never writes).
    pub(crate) fn is_done(&self, ticket: u64, level: Level) -> bool {
        self.reached(ticket, level)
    }

    /// Flushes (and syncs, for `Synced`) everything appended so far.
    pub(crate) fn flush_all(&self, level: Level) -> Result<(), StorageError> {
        let ticket = self.appended();
        self.wait(ticket, level)
    }

    /// One flush round, as leader. Takes the state unlocked-by-caller's guard and returns it.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>, level: Level) -> MutexGuard<'a, State> {
        if let Some(offset) = st.unmarked_sync.take() {
            let mut payload = Vec::with_capacity(9);
            record::encode_synced(&mut payload, offset);
            let mut framed = Vec::with_capacity(payload.len() + frame::RECORD_OVERHEAD);
            frame::encode_record(&payload, &mut framed);
            st.tail.extend_from_slice(&framed);
            st.appended += framed.len() as u64;
        }
        st.flushing = true;
        let spare = std::mem::take(&mut st.spare);
        let mut batch = std::mem::replace(&mut st.tail, spare);
        let end = st.appended;
        let mut file = st.file.take();
        drop(st);

        let result = match file.as_mut() {
            Some(file) => write_round(file.as_mut(), &batch, level),
            None => Err(io::Error::other(
                "log segment missing (an earlier flush panicked)",
            )),
        };
        batch.clear();

        let mut st = self.lock();
        st.spare = batch;
        st.file = file;
        st.flushing = false;
        self.finish_round(&mut st, end, level, result.map(|()| None));
        st
    }

    /// Publishes the end of a flush round: new positions, or the failure.
    fn finish_round(
        &self,
        st: &mut State,
        end: u64,
        level: Level,
        result: io::Result<Option<u64>>,
    ) {
        match result {
            Ok(new_segment) => {
                // Relaxed: only a leader stores `written`, and we are the leader (under the lock).
                let written_before = self.written.load(Ordering::Relaxed);
                if let Some(seq) = new_segment {
                    st.seq = seq;
                    st.segment_len = frame::HEADER_LEN as u64;
                } else {
                    st.segment_len += end - written_before;
                }
                // Release (both stores): pairs with the Acquire in `reached`.
                self.written.store(end, Ordering::Release);
                if level == Level::Synced || new_segment.is_some() {
                    self.synced.store(end, Ordering::Release);
                    if new_segment.is_none() {
                        st.unmarked_sync = Some(st.segment_len);
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    dir = %self.dir.display(),
                    "caskv: writing the log failed; refusing every write until restart"
                );
                let _ = self.failed.set(StorageError::from(e));
            }
        }
        self.progress.notify_all();
    }

    /// Ends the current segment (written and synced in full) and starts segment `seq + 1`.
    /// Everything appended before this call is in the old segment or earlier; everything
    /// appended after it goes to the new one. Returns the new segment's number.
    pub(crate) fn rotate(&self) -> Result<u64, StorageError> {
        let mut st = self.lock();
        loop {
            if let Some(e) = self.failed.get() {
                return Err(e.clone());
            }
            if !st.flushing {
                break;
            }
            st = self.progress.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.flushing = true;
        st.unmarked_sync = None; // the old segment ends synced; the new one starts clean
        let spare = std::mem::take(&mut st.spare);
        let mut batch = std::mem::replace(&mut st.tail, spare);
        let end = st.appended;
        let next = st.seq + 1;
        let mut file = st.file.take();
        drop(st);

        let result = (|| {
            let old = file
                .as_mut()
                .ok_or_else(|| io::Error::other("log segment missing"))?;
            write_round(old.as_mut(), &batch, Level::Synced)?;
            let new = new_segment(&self.dir, next, &self.create)?;
            file = Some(new);
            Ok(())
        })();
        batch.clear();

        let mut st = self.lock();
        st.spare = batch;
        st.file = file;
        st.flushing = false;
        let ok = result.is_ok();
        self.finish_round(&mut st, end, Level::Synced, result.map(|()| Some(next)));
        drop(st);
        match ok {
            true => Ok(next),
            false => Err(self
                .failure()
                .unwrap_or_else(|| io::Error::other("rotation failed").into())),
        }
    }
}

fn write_round(file: &mut dyn SegmentFile, batch: &[u8], level: Level) -> io::Result<()> {
    if !batch.is_empty() {
        file.append(batch)?;
    }
    if level == Level::Synced {
        file.sync()?;
    }
    Ok(())
}

/// Creates segment `seq`: header written and synced, directory entry synced.
fn new_segment(dir: &Path, seq: u64, create: &CreateSegment) -> io::Result<Box<dyn SegmentFile>> {
    let mut file = create(&segment_path(dir, seq))?;
    file.append(&frame::encode_header(FileKind::Log, seq))?;
    file.sync()?;
    sync_dir(dir)?;
    Ok(file)
}
