//! The append-only log: an in-memory tail that writers append framed records to, and a group
//! commit that hands it to the current segment file.
//!
//! # Positions and tickets
//! Every appended byte has a position in one stream that runs across segments (an LSN). A
//! journaled write gets as its ticket the position just past its record. `written` and `synced`
//! are the positions up to which the stream has been handed to the OS and made durable.
//!
//! # Group commit
//! A **round** takes the whole in-memory tail (every record appended since the last round took
//! it, usually while that round's fsync ran), writes it with one `write`, syncs it if the level
//! needs that, publishes the new positions and wakes every waiter they cover, together. One
//! round runs at a time (`flushing`); whoever ends one wakes whoever must lead the next.
//!
//! Two kinds of waiter share the rounds:
//! - **Blocking** ([`Shared::wait`], behind `Pending::wait`): leader/follower. A waiter whose
//!   ticket is uncovered leads a round itself if none runs; otherwise it registers an unpark
//!   of its thread in the same waiter map as the futures (raising `wanted`) and parks, and only
//!   the round that covers it unparks it (the flusher leads the next round for waiters a round
//!   leaves uncovered, as for futures). Before, every blocking waiter slept on one condition
//!   variable that each round's end signalled to all: every one of them woke and took the
//!   state lock again just to find out whether it was covered; parking lifted acknowledged
//!   `set_cas`/s at 64 threads under `Always` from 28,445 to 43,521–46,190
//!   (`benches/durability.rs --quick`, 2 cores). Handing every blocking waiter to the flusher,
//!   never leading itself, measured 7,460. A wait at another level than the ack level (a
//!   synced flush under `EverySec`) still sleeps on `progress`.
//! - **Async** ([`Shared::poll_ticket`], behind `Pending` as a `Future`): an async caller must
//!   not fsync on its runtime's thread, so it registers its waker keyed by its ticket, raises
//!   `wanted`, and the log's **flusher thread** (started with the log, stopped and joined when
//!   it is dropped, after a final synced flush) leads rounds at the ack level until the
//!   position reaches `wanted`. Under `EverySec`/`Never` only a `write` is needed, and an async
//!   waiter leads it itself when no round runs (no hand-off; a `write` to the page cache does
//!   not wait for the disk).
//!
//! The section that publishes a position (under the state lock) also removes the registered
//! wakers at or below it, and they are woken once the lock is released; a registration checks
//! the position and the failure under that same lock, so none is missed. A dropped future
//! removes its registration; one woken already is gone.
//!
//! # Sync markers
//! After each successful sync the next round first appends a marker record naming the segment
//! offset up to which the file is known durable. Recovery uses the last intact marker to tell
//! damage in the region that was never synced (a torn tail, whatever its shape: pages of an
//! unsynced write reach the disk in any order) from damage in data that was synced (corruption).
//!
//! # Failure
//! A failed write or sync poisons the log: every waiter, present and future, gets the error (the
//! section that records the failure takes every registered waker and wakes it), and
//! the persistent store refuses new writes. Nothing is retried: after a failed fsync the kernel
//! may have dropped the dirty pages, so a later successful fsync proves nothing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::task::{Poll, Waker};

use super::frame::{self, FileKind};
use super::record;
use crate::error::StorageError;
use crate::sync::{thread, Arc, AtomicU64, Condvar, Mutex, MutexGuard, Ordering, StdArc};

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
    StdArc<dyn Fn(&Path) -> io::Result<Box<dyn SegmentFile>> + Send + Sync>;

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

/// The log: the handle that owns the flusher thread. Everything else lives in [`Shared`], which
/// the flusher holds too; `Log` derefs to it.
pub(crate) struct Log {
    shared: Arc<Shared>,
    flusher: Option<thread::JoinHandle<()>>,
}

/// What the writers, the waiters and the flusher thread share. See the module docs.
pub(crate) struct Shared {
    dir: PathBuf,
    policy: FsyncPolicy,
    create: CreateSegment,
    state: Mutex<State>,
    /// Signalled whenever a flush round ends (positions moved, or the log failed): blocking
    /// waiters ([`Shared::wait`]) wait on it.
    progress: Condvar,
    /// Signalled when the flusher has work: an async waiter registered while no round ran, a
    /// round ended with async waiters still uncovered, or the log is closing.
    work: Condvar,
    /// Stream position handed to the OS.
    written: AtomicU64,
    /// Stream position known durable.
    synced: AtomicU64,
    failed: OnceLock<StorageError>,
}

struct State {
    /// Appended, not yet taken by a round.
    tail: Vec<u8>,
    /// A cleared buffer to swap in for `tail` (saves an allocation per round).
    spare: Vec<u8>,
    /// Stream position at the end of `tail`.
    appended: u64,
    /// A round is writing; `file` is out with it.
    flushing: bool,
    file: Option<Box<dyn SegmentFile>>,
    /// The current segment's number.
    seq: u64,
    /// Bytes in the current segment file, header included (as the rounds have written them).
    segment_len: u64,
    /// A segment offset known durable that no marker has recorded yet.
    unmarked_sync: Option<u64>,
    /// Registered waiters, keyed by (ticket, registration number): futures' wakers and parked
    /// blocking waiters' unparks. Invariant: every entry's ticket is above the ack level's
    /// position; the section that moves the position (or fails the log) removes the entries it
    /// covers and wakes them once the lock is released.
    wakers: BTreeMap<(u64, u64), Waker>,
    /// The next registration number.
    next_waiter: u64,
    /// The highest ticket a waiter has registered for: the flusher runs rounds until the ack
    /// level's position reaches it.
    wanted: u64,
    /// The log is closing: the flusher makes its final flush and exits.
    closing: bool,
}

impl State {
    /// Registers a waiter for `ticket` (a future's waker or a parked thread's unpark) and
    /// raises `wanted` to it, so that some round covers it; returns its registration number.
    /// The caller holds the lock and saw the ticket uncovered and the log healthy under it.
    fn register(&mut self, ticket: u64, waker: Waker) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.wakers.insert((ticket, id), waker);
        self.wanted = self.wanted.max(ticket);
        id
    }
}

/// Whether a flush round must sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Handed to the OS.
    Written,
    /// Durable.
    Synced,
}

impl std::ops::Deref for Log {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Log {
    /// Starts a log in a new segment `seq` (which must not exist yet) of `dir`, with its
    /// flusher thread.
    pub(crate) fn create(
        dir: &Path,
        seq: u64,
        policy: FsyncPolicy,
        create: CreateSegment,
    ) -> io::Result<Log> {
        let file = new_segment(dir, seq, &create)?;
        Log::start(dir, seq, policy, create, file)
    }

    /// A log over an already open segment (the loom models' in-memory stand-in, no header).
    #[cfg(caskv_loom)]
    pub(crate) fn over(policy: FsyncPolicy, file: Box<dyn SegmentFile>) -> io::Result<Log> {
        let create: CreateSegment = StdArc::new(|_: &Path| Err(io::Error::other("no files")));
        Log::start(Path::new(""), 0, policy, create, file)
    }

    fn start(
        dir: &Path,
        seq: u64,
        policy: FsyncPolicy,
        create: CreateSegment,
        file: Box<dyn SegmentFile>,
    ) -> io::Result<Log> {
        let shared = Arc::new(Shared {
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
                wakers: BTreeMap::new(),
                next_waiter: 0,
                wanted: 0,
                closing: false,
            }),
            progress: Condvar::new(),
            work: Condvar::new(),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            failed: OnceLock::new(),
        });
        let flusher = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("caskv-log-flush".into())
                .spawn(move || shared.flusher())?
        };
        Ok(Log {
            shared,
            flusher: Some(flusher),
        })
    }
}

impl Drop for Log {
    /// Stops the flusher after its final flush, and joins it.
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closing = true;
        self.shared.work.notify_all();
        drop(st);
        if let Some(flusher) = self.flusher.take() {
            // The last handle can be dropped on the flusher itself (an executor whose `wake`
            // drops the woken task there): it then exits after its final flush unjoined.
            if flusher.thread().id() != thread::current().id() {
                let _ = flusher.join();
            }
        }
    }
}

impl Shared {
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
        let mut st = self.lock();
        // Under the state lock, as every failure: a leader checks `failed` under it before it
        // starts a round, so no round starts after this.
        let _ = self.failed.set(StorageError::from(e));
        let woken = std::mem::take(&mut st.wakers);
        self.progress.notify_all();
        drop(st);
        wake_all(woken);
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

    fn position(&self, level: Level) -> u64 {
        match level {
            // Acquire: pairs with the Release stores in `finish_round`; the position is only a
            // number, but reading it after the round's store keeps every wait monotonic.
            Level::Written => self.written.load(Ordering::Acquire),
            Level::Synced => self.synced.load(Ordering::Acquire),
        }
    }

    fn reached(&self, ticket: u64, level: Level) -> bool {
        self.position(level) >= ticket
    }

    /// Blocks until the stream is at `level` up to `ticket`, leading flush rounds as needed
    /// (leader/follower: the caller's thread does the I/O when no round runs).
    pub(crate) fn wait(&self, ticket: u64, level: Level) -> Result<(), StorageError> {
        if self.reached(ticket, level) {
            return Ok(());
        }
        if level == self.ack_level() {
            return self.wait_parked(ticket, level);
        }
        loop {
            let mut st = self.lock();
            loop {
                if self.reached(ticket, level) {
                    return Ok(());
                }
                if let Some(e) = self.failed.get() {
                    return Err(e.clone());
                }
                if !st.flushing {
                    break;
                }
                st = self.progress.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            self.lead(st, level);
        }
    }

    /// [`wait`](Shared::wait) at the ack level: leads a round when none runs, else parks,
    /// registered (keyed by its ticket, like a future) so that the round that covers it, and
    /// only that one, unparks it. A spurious unpark finds its entry still there and parks
    /// again; an entry is removed only by the round that covers it, by a failure (which takes
    /// them all), or by the waiter itself when it goes to lead.
    fn wait_parked(&self, ticket: u64, level: Level) -> Result<(), StorageError> {
        let mut waiter = None;
        loop {
            let mut st = self.lock();
            if self.reached(ticket, level) {
                return Ok(());
            }
            if let Some(e) = self.failed.get() {
                return Err(e.clone());
            }
            if !st.flushing {
                if let Some(id) = waiter.take() {
                    let _ = st.wakers.remove(&(ticket, id));
                }
                self.lead(st, level);
                continue;
            }
            if waiter.is_none() {
                let unpark = Waker::from(StdArc::new(Unpark(thread::current())));
                waiter = Some(st.register(ticket, unpark));
            }
            drop(st);
            thread::park();
        }
    }

    /// The async side of [`wait`](Shared::wait), at the ack level: `Ready` once `ticket` is
    /// reached or the log failed; otherwise registers `waker` (under `waiter`, which it fills
    /// in on the first registration) for the round that will cover the ticket, and hands that
    /// round to the flusher. Never waits for a round: under `Always` it never touches the file;
    /// under `EverySec`/`Never` it may `write` (no fsync) right here when no round runs, as
    /// Redis writes its AOF on its event loop, which saves two thread hand-offs per write.
    pub(crate) fn poll_ticket(
        &self,
        ticket: u64,
        waiter: &mut Option<u64>,
        waker: &Waker,
    ) -> Poll<Result<(), StorageError>> {
        let level = self.ack_level();
        if self.reached(ticket, level) {
            return Poll::Ready(Ok(()));
        }
        if level == Level::Written {
            if let Ok(st) = self.state.try_lock() {
                // `lead` refuses a failed log (under this lock, where `failed` is set).
                if !st.flushing {
                    self.lead(st, level);
                }
            }
        }
        let mut st = self.lock();
        if self.reached(ticket, level) {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = self.failed.get() {
            return Poll::Ready(Err(e.clone()));
        }
        // A replaced waker is dropped after the lock is released: its drop may run executor
        // code that reaches this log again.
        let mut replaced = None;
        match waiter.and_then(|id| st.wakers.get_mut(&(ticket, id))) {
            Some(registered) => {
                if !registered.will_wake(waker) {
                    replaced = Some(std::mem::replace(registered, waker.clone()));
                }
            }
            None => *waiter = Some(st.register(ticket, waker.clone())),
        }
        if !st.flushing {
            // A running round notifies the flusher when it ends with waiters left.
            self.work.notify_one();
        }
        drop(st);
        drop(replaced);
        Poll::Pending
    }

    /// Removes a waiter that [`poll_ticket`](Shared::poll_ticket) registered and that will not
    /// be polled again (its future was dropped). A waiter already woken is gone already.
    pub(crate) fn forget(&self, ticket: u64, waiter: u64) {
        let removed = self.lock().wakers.remove(&(ticket, waiter));
        // Dropped after the lock is released (see `poll_ticket`).
        drop(removed);
    }

    /// How many async waiters are registered.
    #[cfg(test)]
    pub(crate) fn waiters(&self) -> usize {
        self.lock().wakers.len()
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

    /// The flusher thread: runs a round at the ack level whenever an async waiter's ticket is
    /// beyond the position and no other round runs; on close, makes a final synced flush.
    fn flusher(&self) {
        let level = self.ack_level();
        let mut st = self.lock();
        while !st.closing {
            if !st.flushing && self.failed.get().is_none() && st.wanted > self.position(level) {
                self.lead(st, level);
                st = self.lock();
            } else {
                st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        drop(st);
        if self.failed.get().is_none() {
            // An error poisons the log and is logged there.
            let _ = self.flush_all(Level::Synced);
        }
    }

    /// One flush round, as leader (a blocking waiter or the flusher); the caller checked that
    /// no round runs. Takes the whole tail, writes it, syncs it for `Synced`, publishes the
    /// positions and wakes every waiter they cover.
    fn lead(&self, mut st: MutexGuard<'_, State>, level: Level) {
        if self.failed.get().is_some() {
            // A failed log writes nothing more (its callers see the failure and stop). Read
            // under the lock, where every failure is set: a round that failed while a caller
            // looked must not be followed by one that publishes `written` over its lost bytes.
            return;
        }
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

        let result = unwind_to_error(|| match file.as_mut() {
            Some(file) => write_round(file.as_mut(), &batch, level),
            None => Err(io::Error::other("log segment missing")),
        });
        batch.clear();

        let mut st = self.lock();
        st.spare = batch;
        st.file = file;
        st.flushing = false;
        let woken = self.finish_round(&mut st, end, level, result.map(|()| None));
        drop(st);
        wake_all(woken);
    }

    /// Publishes the end of a flush round: new positions, or the failure. Returns the async
    /// waiters it covers (all of them on failure), to be woken once the lock is released.
    #[must_use = "the covered waiters must be woken"]
    fn finish_round(
        &self,
        st: &mut State,
        end: u64,
        level: Level,
        result: io::Result<Option<u64>>,
    ) -> BTreeMap<(u64, u64), Waker> {
        let woken = match result {
            Ok(new_segment) => {
                // Relaxed: only a round stores `written`, and we end the one round (under the
                // lock).
                let written_before = self.written.load(Ordering::Relaxed);
                if let Some(seq) = new_segment {
                    st.seq = seq;
                    st.segment_len = frame::HEADER_LEN as u64;
                } else {
                    st.segment_len += end - written_before;
                }
                // Release (both stores): pairs with the Acquire in `position`.
                self.written.store(end, Ordering::Release);
                if level == Level::Synced || new_segment.is_some() {
                    self.synced.store(end, Ordering::Release);
                    if new_segment.is_none() {
                        st.unmarked_sync = Some(st.segment_len);
                    }
                }
                // Relaxed: we stored it just above, under the lock.
                let covered = match self.ack_level() {
                    Level::Written => self.written.load(Ordering::Relaxed),
                    Level::Synced => self.synced.load(Ordering::Relaxed),
                };
                let uncovered = st.wakers.split_off(&(covered + 1, 0));
                std::mem::replace(&mut st.wakers, uncovered)
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    dir = %self.dir.display(),
                    "caskv: writing the log failed; refusing every write until restart"
                );
                let _ = self.failed.set(StorageError::from(e));
                std::mem::take(&mut st.wakers)
            }
        };
        self.progress.notify_all();
        if !st.wakers.is_empty() {
            // The round was a blocking waiter's or a rotation: hand the rest to the flusher.
            self.work.notify_one();
        }
        woken
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

        let result = unwind_to_error(|| {
            let old = file
                .as_mut()
                .ok_or_else(|| io::Error::other("log segment missing"))?;
            write_round(old.as_mut(), &batch, Level::Synced)?;
            let new = new_segment(&self.dir, next, &self.create)?;
            file = Some(new);
            Ok(())
        });
        batch.clear();

        let mut st = self.lock();
        st.spare = batch;
        st.file = file;
        st.flushing = false;
        let ok = result.is_ok();
        let woken = self.finish_round(&mut st, end, Level::Synced, result.map(|()| Some(next)));
        drop(st);
        wake_all(woken);
        match ok {
            true => Ok(next),
            false => Err(self
                .failure()
                .unwrap_or_else(|| io::Error::other("rotation failed").into())),
        }
    }
}

/// The waker of a parked blocking waiter: unparks its thread.
struct Unpark(thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: StdArc<Self>) {
        self.0.unpark();
    }
}

/// Wakes every waiter of a round. A waker that panics (a foreign executor's bug) is logged and
/// the rest are still woken: a panic here would strand them, and on the flusher thread it would
/// stop every later round for async waiters.
fn wake_all(woken: BTreeMap<(u64, u64), Waker>) {
    for waker in woken.into_values() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake())).is_err() {
            tracing::error!(
                "caskv: an async waiter's waker panicked when woken; the others are woken"
            );
        }
    }
}

/// Runs a round's I/O; a panic in it (a `SegmentFile` that panics) becomes an I/O error, which
/// fails the log like any other: the round ends, `flushing` is cleared and every waiter is
/// woken with the error, instead of `flushing` staying set and every waiter asleep for ever.
fn unwind_to_error(io: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(io))
        .unwrap_or_else(|_| Err(io::Error::other("a log flush round panicked")))
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
