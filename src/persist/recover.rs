//! Recovery: the latest snapshot, then every log segment after it, in order.
//!
//! # Files of a data directory
//! - `log-<seq>.caskv`: log segments, numbered in order (hex, 16 digits).
//! - `snapshot-<seq>.caskv`: the state as of the start of segment `seq`; segments from `seq`
//!   on are replayed after it, older segments and snapshots are obsolete.
//! - `*.tmp`: a snapshot being written when the process stopped; removed.
//! - `LOCK`: held (an OS file lock) by the process that has the directory open.
//!
//! # What counts as damage
//! Only the last segment can end in a torn tail: every earlier one was written and synced in
//! full before its successor was created. In the last segment, damage after the last intact
//! sync marker lies in data that was never known durable and is truncated, with a log line;
//! damage before it, damage in any other file, or a gap in the segment numbers is corruption
//! and stops recovery with the file and offset.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::PersistError;
use super::frame::{self, FileKind, HeaderError, ScanEnd};
use super::log::segment_path;
use super::record::{self, Record, Space};

/// A recovered version, key and value still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedVersion {
    pub(crate) value: Vec<u8>,
    pub(crate) flags: u64,
    pub(crate) modify_index: u64,
    pub(crate) create_index: u64,
    /// When it expires (ms since the UNIX epoch); 0: never.
    pub(crate) deadline: u64,
}

/// One logged mutation, as the log segments replayed after the snapshot hold it: what the
/// change feed resumes from after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedWrites {
    pub(crate) space: Space,
    pub(crate) index: u64,
    /// Each key written, with its version (`None`: deleted).
    pub(crate) writes: Vec<(Vec<u8>, Option<OwnedVersion>)>,
}

/// What recovery found: the state of each space and the index to resume above.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) kv: HashMap<Vec<u8>, OwnedVersion>,
    pub(crate) services: HashMap<Vec<u8>, OwnedVersion>,
    /// The mutations of the replayed log segments, in log order (not index order).
    pub(crate) logged: Vec<LoggedWrites>,
    /// Every mutation with an index above this is in `logged`: the snapshot's high-water mark
    /// (0 without a snapshot: the log is whole).
    pub(crate) logged_after: u64,
    /// Every index ever handed out is at or below this.
    pub(crate) high_water: u64,
    /// The highest segment number present (0 when there is none).
    pub(crate) last_segment: u64,
    /// Log bytes replayed (what a snapshot would compact).
    pub(crate) log_bytes: u64,
    pub(crate) report: RecoveryReport,
}

/// What [`Db::open`](crate::Db::open) did to bring the state back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The snapshot loaded, if any.
    pub snapshot: Option<PathBuf>,
    /// Entries (KV and services) the snapshot held.
    pub snapshot_entries: u64,
    /// Log segments replayed after it.
    pub segments: u64,
    /// Log records replayed.
    pub records: u64,
    /// Bytes of a torn tail cut off the last segment (0 when it ended cleanly).
    pub truncated_bytes: u64,
    /// The high-water mark the global index resumed above.
    pub high_water: u64,
    /// Time spent reading files and rebuilding the state.
    pub elapsed: Duration,
}

fn parse_name(name: &str, prefix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(".caskv")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

/// The path of snapshot `seq` in `dir`.
pub(crate) fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{seq:016x}.caskv"))
}

/// The files of a data directory, sorted by number.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) segments: Vec<u64>,
    pub(crate) snapshots: Vec<u64>,
    pub(crate) temporary: Vec<PathBuf>,
}

pub(crate) fn list(dir: &Path) -> Result<Listing, PersistError> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(PersistError::io(dir))? {
        let entry = entry.map_err(PersistError::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_name(name, "log-") {
            listing.segments.push(seq);
        } else if let Some(seq) = parse_name(name, "snapshot-") {
            listing.snapshots.push(seq);
        } else if name.ends_with(".tmp") {
            listing.temporary.push(entry.path());
        }
    }
    listing.segments.sort_unstable();
    listing.snapshots.sort_unstable();
    Ok(listing)
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> PersistError {
    PersistError::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn check_header(file: &Path, bytes: &[u8], kind: FileKind, seq: u64) -> Result<(), PersistError> {
    match frame::decode_header(bytes, kind) {
        Ok(h) if h.seq == seq => Ok(()),
        Ok(h) => Err(corrupt(
            file,
            0,
            format!("header names number {} but the file name says {seq}", h.seq),
        )),
        Err(HeaderError::NewerVersion { found }) => Err(PersistError::NewerFormat {
            file: file.to_path_buf(),
            found,
            supported: frame::FORMAT_VERSION,
        }),
        Err(e) => Err(corrupt(file, 0, e.to_string())),
    }
}

impl Recovered {
    fn apply(&mut self, record: Record<'_>) -> Result<(), &'static str> {
        match record {
            Record::Writes {
                space,
                index,
                writes,
            } => {
                self.high_water = self.high_water.max(index);
                let map = match space {
                    Space::Kv => &mut self.kv,
                    Space::Services => &mut self.services,
                };
                for (key, version) in writes {
                    match version {
                        Some(v) => {
                            map.insert(
                                key.to_vec(),
                                OwnedVersion {
                                    value: v.value.to_vec(),
                                    flags: v.flags,
                                    modify_index: v.modify_index,
                                    create_index: v.create_index,
                                    deadline: v.deadline,
                                },
                            );
                        }
                        None => {
                            map.remove(key);
                        }
                    }
                }
            }
            Record::Reserve { through } => self.high_water = self.high_water.max(through),
            Record::Synced { .. } => {}
            Record::SnapshotHead { .. } | Record::SnapshotEnd { .. } => {
                return Err("a snapshot record inside a log segment");
            }
        }
        Ok(())
    }
}

/// Reads a data directory back. Truncates a torn tail of the last segment (with a log line) and
/// removes leftovers of an interrupted snapshot; changes nothing else.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, PersistError> {
    let start = Instant::now();
    let listing = list(dir)?;
    let mut out = Recovered::default();

    for tmp in &listing.temporary {
        tracing::info!(file = %tmp.display(), "caskv: removing an unfinished snapshot");
        fs::remove_file(tmp).map_err(PersistError::io(tmp))?;
    }

    let base = listing.snapshots.last().copied();
    if let Some(seq) = base {
        load_snapshot(&snapshot_path(dir, seq), seq, &mut out)?;
    }

    let replay: Vec<u64> = listing
        .segments
        .iter()
        .copied()
        .filter(|s| base.is_none_or(|b| *s >= b))
        .collect();
    if let (Some(b), Some(first)) = (base, replay.first()) {
        if *first != b {
            return Err(corrupt(
                &segment_path(dir, b),
                0,
                format!("missing: snapshot {b} is followed by segment {first}"),
            ));
        }
    } else if let Some(b) = base {
        return Err(corrupt(
            &segment_path(dir, b),
            0,
            "missing: the snapshot names it as the first segment to replay",
        ));
    }
    for pair in replay.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(corrupt(
                &segment_path(dir, pair[0] + 1),
                0,
                format!("missing: segments {} and {} are present", pair[0], pair[1]),
            ));
        }
    }
    out.last_segment = listing.segments.last().copied().unwrap_or(0);
    for (i, &seq) in replay.iter().enumerate() {
        let last = i + 1 == replay.len();
        if replay_segment(&segment_path(dir, seq), seq, last, &mut out)? {
            out.report.segments += 1;
        } else {
            // Its header never became durable, so nothing names it: the next log reuses the number.
            out.last_segment = seq - 1;
        }
    }
    out.report.high_water = out.high_water;
    out.report.elapsed = start.elapsed();
    Ok(out)
}

fn load_snapshot(path: &Path, seq: u64, out: &mut Recovered) -> Result<(), PersistError> {
    let bytes = fs::read(path).map_err(PersistError::io(path))?;
    check_header(path, &bytes, FileKind::Snapshot, seq)?;
    let body = &bytes[frame::HEADER_LEN..];
    let scan = frame::scan(body, false);
    if let ScanEnd::Corrupt { at, reason } = scan.end {
        return Err(corrupt(path, (frame::HEADER_LEN + at) as u64, reason));
    }
    let offset = |at: usize| (frame::HEADER_LEN + at) as u64;
    let mut entries = 0u64;
    let mut ended = false;
    for (i, (at, payload)) in scan.records.iter().enumerate() {
        let record =
            record::decode(payload).map_err(|e| corrupt(path, offset(*at), e.to_string()))?;
        match record {
            Record::SnapshotHead { high_water } if i == 0 => {
                out.high_water = out.high_water.max(high_water);
                out.logged_after = high_water;
            }
            Record::SnapshotEnd { entries: n } if i + 1 == scan.records.len() => {
                if n != entries {
                    return Err(corrupt(
                        path,
                        offset(*at),
                        format!("snapshot ends after {entries} entries but says {n}"),
                    ));
                }
                ended = true;
            }
            record @ Record::Writes { .. } if i > 0 => {
                entries += 1;
                out.apply(record)
                    .map_err(|r| corrupt(path, offset(*at), r))?;
            }
            _ => {
                return Err(corrupt(
                    path,
                    offset(*at),
                    "record out of place in a snapshot",
                ))
            }
        }
    }
    if !ended {
        return Err(corrupt(
            path,
            bytes.len() as u64,
            "snapshot has no end record",
        ));
    }
    out.report.snapshot = Some(path.to_path_buf());
    out.report.snapshot_entries = entries;
    Ok(())
}

/// Replays one segment; returns `false` when it was a torn, empty last segment and was removed.
fn replay_segment(
    path: &Path,
    seq: u64,
    last: bool,
    out: &mut Recovered,
) -> Result<bool, PersistError> {
    let bytes = fs::read(path).map_err(PersistError::io(path))?;
    if last && bytes.len() < frame::HEADER_LEN {
        // Created, header not yet durable: the process stopped before anything was logged in it
        // (a snapshot names a segment only after its header was synced).
        tracing::warn!(
            file = %path.display(),
            bytes = bytes.len(),
            "caskv: the last log segment has a torn header and holds nothing; removing it"
        );
        fs::remove_file(path).map_err(PersistError::io(path))?;
        out.report.truncated_bytes += bytes.len() as u64;
        return Ok(false);
    }
    check_header(path, &bytes, FileKind::Log, seq)?;
    let body = &bytes[frame::HEADER_LEN..];
    let scan = frame::scan(body, last);
    let offset = |at: usize| (frame::HEADER_LEN + at) as u64;
    let mut synced_through = frame::HEADER_LEN as u64;
    for (at, payload) in &scan.records {
        let record =
            record::decode(payload).map_err(|e| corrupt(path, offset(*at), e.to_string()))?;
        if let Record::Synced { through } = record {
            synced_through = synced_through.max(through);
        }
        if let Record::Writes {
            space,
            index,
            writes,
        } = &record
        {
            out.logged.push(LoggedWrites {
                space: *space,
                index: *index,
                writes: writes
                    .iter()
                    .map(|(key, version)| {
                        (
                            key.to_vec(),
                            version.as_ref().map(|v| OwnedVersion {
                                value: v.value.to_vec(),
                                flags: v.flags,
                                modify_index: v.modify_index,
                                create_index: v.create_index,
                                deadline: v.deadline,
                            }),
                        )
                    })
                    .collect(),
            });
        }
        out.apply(record)
            .map_err(|r| corrupt(path, offset(*at), r))?;
        out.report.records += 1;
    }
    out.log_bytes += bytes.len() as u64;
    let torn_at = match scan.end {
        ScanEnd::Clean => None,
        ScanEnd::TornTail { at, .. } => Some(at),
        ScanEnd::Corrupt { at, reason } if last => {
            // Intact markers after the damage still tell how far the file was synced.
            for (_, payload) in frame::salvage(body, at) {
                if let Ok(Record::Synced { through }) = record::decode(payload) {
                    synced_through = synced_through.max(through);
                }
            }
            // Damage in data never known durable is a torn tail, whatever shape the crash left
            // it in (pages of an unsynced write reach the disk in any order).
            if offset(at) >= synced_through {
                Some(at)
            } else {
                return Err(corrupt(path, offset(at), reason));
            }
        }
        ScanEnd::Corrupt { at, reason } => return Err(corrupt(path, offset(at), reason)),
    };
    if let Some(at) = torn_at {
        let keep = offset(at);
        let dropped = bytes.len() as u64 - keep;
        tracing::warn!(
            file = %path.display(),
            offset = keep,
            bytes = dropped,
            "caskv: the log ends in a torn write (a crash mid-append); truncating {dropped} bytes"
        );
        truncate(path, keep)?;
        out.report.truncated_bytes += dropped;
    }
    Ok(true)
}

fn truncate(path: &Path, len: u64) -> Result<(), PersistError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(PersistError::io(path))?;
    file.set_len(len).map_err(PersistError::io(path))?;
    file.sync_all().map_err(PersistError::io(path))
}
