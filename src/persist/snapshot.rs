//! Snapshots: the whole state written beside the log, so the log before it can be dropped.
//!
//! # Consistency with the log, without stopping writers
//! 1. **Rotate** the log: everything appended so far ends up in segments before `seq`,
//!    everything appended from now on in segment `seq` or later.
//! 2. **Scan** the stores, waiting at each key that is mid-batch or mid-journal, so every
//!    version the scan records has already been appended to the log. Writers keep going.
//! 3. **Sync the log** through everything appended by the end of the scan.
//! 4. Write the snapshot to a temporary file, fsync it, rename it to `snapshot-<seq>`, fsync
//!    the directory; then delete older snapshots and the segments before `seq`.
//!
//! Recovery loads the snapshot and replays segments from `seq`. Per key, the scan saw a state
//! at least as new as the key's last record before the rotation (that write was applied before
//! it was appended, and it was appended before the rotation, which came before the scan).
//! Any later record of the key is in the replayed segments and overwrites it (records carry
//! whole versions); and because of step 3 a record the scan saw cannot be lost to a crash while
//! the snapshot survives. So snapshot + replay equals the state at the end of the durable log,
//! as the log alone would have given, and the scan needs no pause of the world.

use std::fs;
use std::hash::Hash;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::codec::Codec;
use super::error::PersistError;
use super::frame::{self, FileKind};
use super::journal::encode_entry;
use super::log::{segment_path, sync_dir, Level};
use super::record::{self, Space};
use super::recover::{list, snapshot_path};
use super::Inner;

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotReport {
    /// The snapshot file.
    pub path: PathBuf,
    /// Entries written (KV and services).
    pub entries: u64,
    /// The file's size.
    pub bytes: u64,
    /// Log segments and older snapshots deleted.
    pub files_removed: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// Log stream position at the rotation (the base for the next automatic snapshot).
    pub(crate) log_position: u64,
}

/// A snapshot file being written: framed records into a buffered file.
struct Writer {
    out: BufWriter<fs::File>,
    payload: Vec<u8>,
    framed: Vec<u8>,
    entries: u64,
}

impl Writer {
    /// Frames and writes the payload built so far.
    fn put(&mut self) -> std::io::Result<()> {
        self.framed.clear();
        frame::encode_record(&self.payload, &mut self.framed);
        self.payload.clear();
        self.out.write_all(&self.framed)
    }

    /// Writes every settled entry of `store` as a set record of `space`.
    fn store<K, V>(&mut self, store: &crate::Store<K, V>, space: Space) -> std::io::Result<()>
    where
        K: Codec + Hash + Eq + Ord + Clone + Send + 'static,
        V: Codec + Clone + Send + 'static,
    {
        let mut result = Ok(());
        store.engine.for_each_settled(|key, entry| {
            if result.is_err() {
                return;
            }
            encode_entry(&mut self.payload, space, key, &entry);
            self.entries += 1;
            result = self.put();
        });
        result
    }
}

pub(crate) fn write<K, V>(inner: &Inner<K, V>) -> Result<SnapshotReport, PersistError>
where
    K: Codec + Hash + Eq + Ord + Clone + Send + Sync + 'static,
    V: Codec + Clone + Send + Sync + 'static,
{
    let start = Instant::now();
    let dir = &inner.dir;
    let log_position = inner.log.appended();
    let seq = inner.log.rotate()?;
    let high_water = inner
        .reservation
        .settled_ceiling()
        .max(inner.store.global_index().high_water());

    let tmp = dir.join(format!("snapshot-{seq:016x}.tmp"));
    let file = fs::File::create(&tmp).map_err(PersistError::io(&tmp))?;
    let mut writer = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        payload: Vec::new(),
        framed: Vec::new(),
        entries: 0,
    };
    let result = (|| -> std::io::Result<u64> {
        writer
            .out
            .write_all(&frame::encode_header(FileKind::Snapshot, seq))?;
        record::encode_snapshot_head(&mut writer.payload, high_water);
        writer.put()?;
        writer.store(&inner.store, Space::Kv)?;
        if let Some(registry) = &inner.registry {
            writer.store(registry.store(), Space::Services)?;
        }
        record::encode_snapshot_end(&mut writer.payload, writer.entries);
        writer.put()?;
        let entries = writer.entries;
        let file = writer.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(entries)
    })();
    let entries = match result {
        Ok(entries) => entries,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(PersistError::io(&tmp)(e));
        }
    };
    // Every version the scan saw was appended before now: make it durable before the snapshot
    // can replace the segments it came from.
    inner.log.flush_all(Level::Synced)?;

    let path = snapshot_path(dir, seq);
    fs::rename(&tmp, &path).map_err(PersistError::io(&path))?;
    sync_dir(dir).map_err(PersistError::io(dir))?;
    let bytes = fs::metadata(&path).map_err(PersistError::io(&path))?.len();

    let mut files_removed = 0;
    let listing = list(dir)?;
    for old in listing.segments.iter().filter(|s| **s < seq) {
        let p = segment_path(dir, *old);
        fs::remove_file(&p).map_err(PersistError::io(&p))?;
        files_removed += 1;
    }
    for old in listing.snapshots.iter().filter(|s| **s < seq) {
        let p = snapshot_path(dir, *old);
        fs::remove_file(&p).map_err(PersistError::io(&p))?;
        files_removed += 1;
    }
    sync_dir(dir).map_err(PersistError::io(dir))?;
    let report = SnapshotReport {
        path,
        entries,
        bytes,
        files_removed,
        elapsed: start.elapsed(),
        log_position,
    };
    tracing::info!(
        file = %report.path.display(),
        entries = report.entries,
        bytes = report.bytes,
        files_removed = report.files_removed,
        elapsed = ?report.elapsed,
        "caskv: snapshot written"
    );
    Ok(report)
}
