//! Persistence tests that need the crate's insides: a file stand-in that loses unsynced bytes
//! (power loss), recovery of a log cut at every byte and with every byte damaged, snapshots
//! racing writers, reopen round trips.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::future::Future as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::log::{segment_path, SegmentFile};
use super::*;
use crate::{Error, Op, Service};

type Db = crate::Db<String, String>;

/// The state a reader would compare: key → (value, flags, modify_index, create_index).
type State = BTreeMap<String, (String, u64, u64, u64)>;

fn state_of(store: &Store<String, String>) -> State {
    store
        .entries()
        .into_iter()
        .map(|(k, e)| {
            let v = e.value;
            (k, (v, e.flags, e.modify_index, e.create_index))
        })
        .collect()
}

fn recovered_state(rec: &recover::Recovered) -> State {
    rec.kv
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.clone()).unwrap(),
                (
                    String::from_utf8(v.value.clone()).unwrap(),
                    v.flags,
                    v.modify_index,
                    v.create_index,
                ),
            )
        })
        .collect()
}

fn options() -> Options {
    Options::default().snapshot_after_bytes(0).services(true)
}

#[test]
fn reopen_restores_every_entry_with_its_indices_and_resumes_above_the_high_water() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    let deleted_at;
    {
        let db: Db = Db::open(dir.path(), options()).unwrap();
        let a = db.set("a".into(), "1".to_string()).unwrap().wait().unwrap();
        db.set_with_flags("b".into(), "2".to_string(), 7)
            .unwrap()
            .wait()
            .unwrap();
        db.set_cas("a".into(), "1b".to_string(), a)
            .unwrap()
            .wait()
            .unwrap();
        db.batch(vec![
            Op::set("c".into(), "3".to_string()),
            Op::delete("b".into()),
            Op::check_index("zz".into(), 0),
        ])
        .unwrap()
        .wait()
        .unwrap();
        db.compare_and_set("d".into(), None, Some("4".to_string()))
            .unwrap()
            .wait()
            .unwrap();
        db.update("a".into(), |v| format!("{}!", v.unwrap()))
            .unwrap()
            .wait()
            .unwrap();
        db.register(
            Service {
                name: "web".into(),
                address: "10.0.0.1".into(),
                port: 80,
                tags: vec!["v1".into()],
                meta: [("zone".to_string(), "a".to_string())].into(),
            },
            Some(0),
        )
        .unwrap()
        .wait()
        .unwrap();
        // A delete at the highest index: that index must not be handed out again.
        deleted_at = db.delete(&"d".to_string()).unwrap().wait().unwrap();
        before = state_of(db.store());
    }
    let db: Db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(state_of(db.store()), before);
    assert_eq!(
        db.store().get("a").unwrap().value.as_str(),
        "1b!",
        "last write wins"
    );
    let web = db.registry().unwrap().get("web").unwrap();
    assert_eq!((web.service.port, web.service.tags.len()), (80, 1));
    assert!(db.recovery().unwrap().records > 0);
    let next = db.set("e".into(), "5".to_string()).unwrap().wait().unwrap();
    assert!(
        next > deleted_at,
        "{next} must be above the deleted {deleted_at}"
    );
}

#[test]
fn a_second_process_is_refused_and_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db: Db = Db::open(dir.path(), options()).unwrap();
    match Db::open(dir.path(), options()) {
        Err(PersistError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(db);
    // Rewrite the first segment's header as version 2, with a correct checksum.
    let seg = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..20]);
    let masked = (crc.rotate_right(15)).wrapping_add(0xa282_ead8);
    bytes[20..24].copy_from_slice(&masked.to_le_bytes());
    fs::write(&seg, &bytes).unwrap();
    match Db::open(dir.path(), options()) {
        Err(PersistError::NewerFormat {
            found: 2,
            supported: 1,
            ..
        }) => {}
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

#[test]
fn corruption_before_the_tail_names_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db: Db = Db::open(dir.path(), options()).unwrap();
        for i in 0..20 {
            db.set(format!("k{i}"), "x".repeat(50))
                .unwrap()
                .wait()
                .unwrap();
        }
    }
    let seg = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[100] ^= 0x10;
    fs::write(&seg, &bytes).unwrap();
    let err = Db::open(dir.path(), options()).unwrap_err();
    let PersistError::Corrupt { file, offset, .. } = &err else {
        panic!("expected Corrupt, got {err:?}");
    };
    assert_eq!(file, &seg);
    assert!(*offset <= 100, "damage at 100 reported at {offset}");
    let message = err.to_string();
    assert!(message.contains("log-0000000000000001.caskv") && message.contains("offset"));
}

/// Writes a small log of varied operations; returns the segment's bytes and the state after
/// each operation (the states a clean prefix can give).
fn small_log() -> (Vec<u8>, Vec<State>) {
    let dir = tempfile::tempdir().unwrap();
    let mut states = vec![State::new()];
    {
        let db: Db = Db::open(dir.path(), options()).unwrap();
        let step = |db: &Db, states: &mut Vec<State>| states.push(state_of(db.store()));
        let a = db
            .set("a".into(), "one".to_string())
            .unwrap()
            .wait()
            .unwrap();
        step(&db, &mut states);
        db.set_with_flags("b".into(), "two".to_string(), 3)
            .unwrap()
            .wait()
            .unwrap();
        step(&db, &mut states);
        db.set_cas("a".into(), "uno".to_string(), a)
            .unwrap()
            .wait()
            .unwrap();
        step(&db, &mut states);
        db.batch(vec![
            Op::set("c".into(), "three".to_string()),
            Op::delete("b".into()),
        ])
        .unwrap()
        .wait()
        .unwrap();
        step(&db, &mut states);
        db.delete(&"a".to_string()).unwrap().wait().unwrap();
        step(&db, &mut states);
        db.set("a".into(), "again".to_string())
            .unwrap()
            .wait()
            .unwrap();
        step(&db, &mut states);
    }
    let bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
    (bytes, states)
}

fn recover_bytes(bytes: &[u8]) -> Result<State, PersistError> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment_path(dir.path(), 1), bytes).unwrap();
    recover::recover(dir.path()).map(|rec| recovered_state(&rec))
}

#[test]
fn a_log_cut_at_every_byte_recovers_a_clean_prefix() {
    let (bytes, states) = small_log();
    let mut last_prefix = 0;
    for cut in 0..=bytes.len() {
        let state = recover_bytes(&bytes[..cut])
            .unwrap_or_else(|e| panic!("cut at {cut}: a cut log is a torn tail, got {e}"));
        let prefix = states
            .iter()
            .position(|s| *s == state)
            .unwrap_or_else(|| panic!("cut at {cut}: {state:?} is no prefix state"));
        assert!(prefix >= last_prefix, "cut at {cut}: the prefix went back");
        last_prefix = prefix;
    }
    assert_eq!(
        last_prefix,
        states.len() - 1,
        "the whole log gives the final state"
    );
}

#[test]
fn a_log_with_any_bit_flipped_recovers_a_clean_prefix_or_refuses() {
    let (bytes, states) = small_log();
    let (mut prefixes, mut refusals) = (0, 0);
    for at in 0..bytes.len() {
        for bit in [at % 8, (at + 3) % 8] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << bit;
            match recover_bytes(&damaged) {
                Ok(state) => {
                    assert!(
                        states.contains(&state),
                        "flip of bit {bit} at {at}: {state:?} is no prefix state"
                    );
                    prefixes += 1;
                }
                Err(PersistError::Corrupt { offset, .. }) => {
                    assert!(offset <= at as u64, "flip at {at} reported at {offset}");
                    refusals += 1;
                }
                Err(e) => panic!("flip of bit {bit} at {at}: unexpected {e}"),
            }
        }
    }
    // Both outcomes occur: damage in synced records refuses, damage in the last is a torn tail.
    assert!(
        prefixes > 0 && refusals > 0,
        "{prefixes} prefixes, {refusals} refusals"
    );
}

/// A segment file that reaches the "disk" only when synced: on a power cut everything written
/// since the last sync is lost, except a torn part the test chooses.
struct LossyFile {
    path: PathBuf,
    file: fs::File,
    disk: Arc<Disk>,
}

#[derive(Default)]
struct Disk {
    /// Per segment: bytes written, bytes synced.
    files: Mutex<HashMap<PathBuf, (u64, u64)>>,
    cut: AtomicBool,
    /// The next sync panics (a broken `SegmentFile`).
    panic_on_sync: AtomicBool,
}

impl Disk {
    fn dead() -> std::io::Error {
        std::io::Error::other("power cut")
    }

    fn creator(disk: &Arc<Disk>) -> log::CreateSegment {
        let disk = disk.clone();
        Arc::new(move |path: &Path| {
            let file = log::create_file(path)?;
            drop(file);
            let file = fs::OpenOptions::new().append(true).open(path)?;
            disk.files
                .lock()
                .unwrap()
                .insert(path.to_path_buf(), (0, 0));
            Ok(Box::new(LossyFile {
                path: path.to_path_buf(),
                file,
                disk: disk.clone(),
            }) as Box<dyn SegmentFile>)
        })
    }

    /// Cuts the power: nothing more reaches any file, and each file keeps what was synced plus
    /// `torn(unsynced)` more bytes, with the first kept unsynced page zeroed when `hole`.
    fn power_cut(&self, mut torn: impl FnMut(u64) -> u64, hole: bool) {
        // Under the lock every append and sync holds: none is half done.
        let files = self.files.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for (path, (written, synced)) in files.iter() {
            let keep = synced + torn(written - synced).min(written - synced);
            let f = fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(keep).unwrap();
            if hole && keep > *synced {
                let mut bytes = fs::read(path).unwrap();
                let from = *synced as usize;
                let to = (from + 64).min(keep as usize);
                bytes[from..to].fill(0);
                fs::write(path, &bytes).unwrap();
            }
        }
    }
}

impl SegmentFile for LossyFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut files = self.disk.files.lock().unwrap();
        if self.disk.cut.load(Ordering::SeqCst) {
            return Err(Disk::dead());
        }
        self.file.write_all(bytes)?;
        files.get_mut(&self.path).unwrap().0 += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.disk.panic_on_sync.swap(false, Ordering::SeqCst) {
            panic!("a segment file's sync panicked");
        }
        let mut files = self.disk.files.lock().unwrap();
        if self.disk.cut.load(Ordering::SeqCst) {
            return Err(Disk::dead());
        }
        self.file.sync_data()?;
        let f = files.get_mut(&self.path).unwrap();
        f.1 = f.0;
        Ok(())
    }
}

/// What the writers had acknowledged: per key, every (index, value, when), oldest first.
type Acked = HashMap<String, Vec<(u64, String, Instant)>>;

/// How the writers of [`run_until_power_cut`] wait for their acknowledgements.
#[derive(Clone, Copy, PartialEq)]
enum Ack {
    /// `Pending::wait` (leader/follower).
    Wait,
    /// Writers 0 and 2 poll the `Pending` future (woken by the flusher), 1 and 3 `wait`.
    Mixed,
}

/// Polls `f` on this thread, parking between polls until its waker unparks it.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Four writers, each CASing its own eight keys (with a two-key batch now and then), until the
/// power is cut. Returns what was acknowledged and when the cut happened.
fn run_until_power_cut(
    dir: &Path,
    policy: FsyncPolicy,
    tick: Duration,
    run_for: Duration,
    torn: impl FnMut(u64) -> u64,
    hole: bool,
    ack: Ack,
) -> (Acked, Instant) {
    let disk = Arc::new(Disk::default());
    let db: Db = Db::open(
        dir,
        options()
            .fsync(policy)
            .tick(tick)
            .create_segment(Disk::creator(&disk)),
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Acked::new());
    let cut_at = std::thread::scope(|s| {
        for t in 0..4 {
            let (db, stop, acked) = (&db, &stop, &acked);
            s.spawn(move || {
                let mut mine: HashMap<String, u64> = HashMap::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let key = format!("t{t}-k{}", i % 8);
                    let value = format!("{t}:{i}");
                    let expected = mine.get(&key).copied().unwrap_or(0);
                    let result = if i.is_multiple_of(5) {
                        let other = format!("t{t}-k{}", (i + 1) % 8);
                        let other_expected = mine.get(&other).copied().unwrap_or(0);
                        db.batch(vec![
                            Op::set_cas(key.clone(), value.clone(), expected),
                            Op::set_cas(other.clone(), value.clone(), other_expected),
                        ])
                        .map(|p| (p, Some(other)))
                    } else {
                        db.set_cas(key.clone(), value.clone(), expected)
                            .map(|p| (p, None))
                    };
                    let Ok((pending, other)) = result else { break };
                    let acked_index = match ack == Ack::Mixed && t % 2 == 0 {
                        true => block_on(pending),
                        false => pending.wait(),
                    };
                    let Ok(index) = acked_index else { break };
                    let now = Instant::now();
                    let mut acked = acked.lock().unwrap();
                    for k in std::iter::once(key).chain(other) {
                        mine.insert(k.clone(), index);
                        acked
                            .entry(k)
                            .or_default()
                            .push((index, value.clone(), now));
                    }
                }
            });
        }
        std::thread::sleep(run_for);
        let cut_at = Instant::now();
        disk.power_cut(torn, hole);
        stop.store(true, Ordering::SeqCst);
        cut_at
    });
    drop(db);
    (acked.into_inner().unwrap(), cut_at)
}

/// Checks the recovered store against acknowledgements older than `window` before the cut.
fn check_survivors(dir: &Path, acked: &Acked, cut_at: Instant, window: Duration) -> usize {
    let db: Db = Db::open(dir, options()).unwrap();
    let mut checked = 0;
    for (key, acks) in acked {
        // The newest acknowledgement older than the window must have survived (or been
        // overwritten by a later write of the same key).
        let Some((index, value, _)) = acks
            .iter()
            .rev()
            .find(|(_, _, when)| cut_at.duration_since(*when) >= window)
        else {
            continue;
        };
        let entry = db.store().get(key.as_str());
        let entry = entry.unwrap_or_else(|| panic!("{key} acknowledged at {index} was lost"));
        assert!(
            entry.modify_index >= *index,
            "{key}: acknowledged {index}, recovered {}",
            entry.modify_index
        );
        if entry.modify_index == *index {
            assert_eq!(&*entry.value, value);
        }
        checked += 1;
    }
    let max_acked = acked.values().flatten().map(|a| a.0).max().unwrap_or(0);
    let next = db
        .set("after".into(), String::new())
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        next > max_acked,
        "index {next} reused (acknowledged up to {max_acked})"
    );
    checked
}

/// Power cuts under `Always`, one per `(seed, hole)` round, writers acknowledging through
/// `ack`: every acknowledged write survives. Returns each round's acknowledged writes.
fn always_loses_nothing_acknowledged(rounds: &[(u64, bool)], ack: Ack) -> Vec<Acked> {
    rounds
        .iter()
        .map(|&(seed, hole)| {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = fastrand::Rng::with_seed(seed);
            let (acked, cut_at) = run_until_power_cut(
                dir.path(),
                FsyncPolicy::Always,
                Duration::from_millis(50),
                Duration::from_millis(300),
                |unsynced| rng.u64(0..=unsynced),
                hole,
                ack,
            );
            assert!(!acked.is_empty());
            let checked = check_survivors(dir.path(), &acked, cut_at, Duration::ZERO);
            assert_eq!(checked, acked.len());
            acked
        })
        .collect()
}

#[test]
fn power_loss_with_always_loses_no_acknowledged_write() {
    always_loses_nothing_acknowledged(&[(0, false), (1, true), (2, false)], Ack::Wait);
}

/// As above, with half the writers acknowledged through the `Pending` future: the flusher's
/// wake-up never comes before the fsync of the woken write.
#[test]
fn power_loss_with_always_loses_no_write_acknowledged_through_a_future() {
    for acked in always_loses_nothing_acknowledged(&[(3, false), (4, true)], Ack::Mixed) {
        let by_future = acked
            .keys()
            .filter(|k| k.starts_with("t0-") || k.starts_with("t2-"));
        assert!(
            by_future.count() > 0,
            "no write was acknowledged through a future"
        );
    }
}

#[test]
fn power_loss_with_everysec_loses_at_most_the_last_window() {
    let dir = tempfile::tempdir().unwrap();
    let tick = Duration::from_millis(50);
    let (acked, cut_at) = run_until_power_cut(
        dir.path(),
        FsyncPolicy::EverySec,
        tick,
        Duration::from_millis(1500),
        |_| 0,
        false,
        Ack::Mixed,
    );
    // The background fsync runs every tick; allow ten ticks for a loaded machine.
    let checked = check_survivors(dir.path(), &acked, cut_at, tick * 10);
    assert!(checked > 0, "every acknowledgement fell inside the window");
}

#[test]
fn power_loss_with_never_recovers_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let (acked, _) = run_until_power_cut(
        dir.path(),
        FsyncPolicy::Never,
        Duration::from_millis(50),
        Duration::from_millis(300),
        |unsynced| rng.u64(0..=unsynced),
        true,
        Ack::Mixed,
    );
    let db: Db = Db::open(dir.path(), options()).unwrap();
    for (key, entry) in db.store().entries() {
        // Writer t's values are "t:i"; a recovered value names a write that was made.
        let (t, _) = entry.value.split_once(':').unwrap();
        assert!(
            key.starts_with(&format!("t{t}-")),
            "{key} holds {}",
            entry.value
        );
    }
    let max_acked = acked.values().flatten().map(|a| a.0).max().unwrap_or(0);
    // Never does not promise the writes, but the index still never goes back.
    let next = db
        .set("after".into(), String::new())
        .unwrap()
        .wait()
        .unwrap();
    assert!(next > max_acked);
}

#[test]
fn snapshots_racing_writers_restore_the_same_state_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let db: Db = Db::open(dir.path(), options()).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let (db, stop) = (&db, &stop);
                s.spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let key = format!("k{}", (i * 7 + t) % 50);
                        let _ = match i % 6 {
                            0 => db.delete(&key).map(drop),
                            1 => db
                                .batch(vec![
                                    Op::set(key, format!("{t}:{i}")),
                                    Op::set(format!("b{}", i % 10), format!("{t}:{i}")),
                                ])
                                .map(drop),
                            _ => db.set(key, format!("{t}:{i}")).map(drop),
                        };
                    }
                });
            }
            let mut snapshots = 0;
            let started = Instant::now();
            while snapshots < 5 || started.elapsed() < Duration::from_millis(300) {
                let report = db.snapshot().unwrap().unwrap();
                assert!(report.path.exists());
                snapshots += 1;
            }
            stop.store(true, Ordering::SeqCst);
        });
        db.sync().unwrap();
        before = state_of(db.store());
        assert!(!before.is_empty());
    }
    let db: Db = Db::open(dir.path(), options()).unwrap();
    assert!(db.recovery().unwrap().snapshot.is_some());
    assert_eq!(state_of(db.store()), before);
    // Only the latest snapshot and the segments after it remain.
    let listing = recover::list(dir.path()).unwrap();
    assert_eq!(listing.snapshots.len(), 1);
    assert!(listing.segments.iter().all(|s| *s >= listing.snapshots[0]));
}

#[test]
fn automatic_snapshots_compact_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let options = options()
        .snapshot_after_bytes(4096)
        .tick(Duration::from_millis(10));
    let before;
    {
        let db: Db = Db::open(dir.path(), options.clone()).unwrap();
        for i in 0..400 {
            db.set(format!("k{}", i % 20), format!("{i:0100}"))
                .unwrap()
                .wait()
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while recover::list(dir.path()).unwrap().snapshots.is_empty() {
            assert!(Instant::now() < deadline, "no automatic snapshot");
            std::thread::sleep(Duration::from_millis(10));
        }
        before = state_of(db.store());
    }
    let log_bytes: u64 = recover::list(dir.path())
        .unwrap()
        .segments
        .iter()
        .map(|s| fs::metadata(segment_path(dir.path(), *s)).unwrap().len())
        .sum();
    assert!(
        log_bytes < 400 * 100,
        "the log was not compacted: {log_bytes} bytes"
    );
    let db: Db = Db::open(dir.path(), options).unwrap();
    assert_eq!(state_of(db.store()), before);
}

#[test]
fn a_failed_fsync_is_never_acknowledged_and_refuses_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let db: Db = Db::open(dir.path(), options().create_segment(Disk::creator(&disk))).unwrap();
    db.set("a".into(), "1".to_string()).unwrap().wait().unwrap();
    disk.cut.store(true, Ordering::SeqCst);
    let pending = db.set("b".into(), "2".to_string()).unwrap();
    assert!(
        pending.wait().is_err(),
        "a write whose fsync failed was acknowledged"
    );
    let refused = db.set("c".into(), "3".to_string()).unwrap_err();
    assert!(matches!(refused, Error::Storage(_)), "{refused}");
    assert!(db.store().get("c").is_none(), "a refused write was applied");
}

/// A registration the log cannot hold is refused before it is applied, and the log goes on:
/// it used to reach the log and fail it, so every later write was refused until a restart.
#[test]
fn an_oversized_registration_is_refused_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db: Db = Db::open(dir.path(), options()).unwrap();
    let service = |meta: String| Service {
        name: "big".into(),
        address: "10.0.0.1".into(),
        port: 80,
        tags: vec![],
        meta: [("blob".to_string(), meta)].into(),
    };
    let err = db
        .register(service("x".repeat(MAX_ENTRY_BYTES)), None)
        .unwrap_err();
    assert!(
        matches!(err, Error::EntryTooLarge { max, .. } if max == MAX_ENTRY_BYTES),
        "{err}"
    );
    assert!(
        db.registry().unwrap().get("big").is_none(),
        "a refused registration was applied"
    );
    db.register(service("small".into()), None)
        .unwrap()
        .wait()
        .unwrap();
    db.set("k".into(), "v".to_string()).unwrap().wait().unwrap();
}

#[test]
fn oversized_entries_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db: Db = Db::open(dir.path(), options()).unwrap();
    let big = "x".repeat(MAX_ENTRY_BYTES + 1);
    let err = db.set("k".into(), big.clone()).unwrap_err();
    assert!(err.is_invalid_argument(), "{err}");
    assert!(db.store().get("k").is_none());
    let err = db.update("k".into(), |_| big.clone()).unwrap_err();
    assert!(err.is_invalid_argument(), "{err}");
    assert!(db.store().get("k").is_none());
    // The log is fine: later writes succeed.
    db.set("k".into(), "small".to_string())
        .unwrap()
        .wait()
        .unwrap();
}

/// Runs `work` on a thread of its own and fails the test if it takes longer than `limit`: a
/// waiter the log never wakes would otherwise hang the test run.
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(work()).ok());
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no answer in {limit:?}: a waiter was never woken"))
}

/// The disk fails while a round is under way: every waiter of that round, async (`.await`) and
/// blocking (`wait`), gets the error and none hangs; so does a `Pending` awaited afterwards,
/// and later writes are refused.
#[test]
fn a_failed_round_reaches_every_awaiting_future_and_every_blocking_waiter() {
    within(Duration::from_secs(30), || {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let db: Arc<Db> =
            Arc::new(Db::open(dir.path(), options().create_segment(Disk::creator(&disk))).unwrap());
        db.set("before".into(), "1".to_string())
            .unwrap()
            .wait()
            .unwrap();
        // Hold the disk: the next round blocks in its `write` until the power is cut.
        let held = disk.files.lock().unwrap();
        let late = db.set("late".into(), "x".to_string()).unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let pending = db.set(format!("a{i}"), "x".to_string()).unwrap();
                // Each future is polled by an executor of its own that parks until woken.
                std::thread::spawn(move || block_on(pending))
            })
            .collect();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let pending = db.set(format!("b{i}"), "x".to_string()).unwrap();
                std::thread::spawn(move || pending.wait())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            tasks.iter().all(|t| !t.is_finished()) && threads.iter().all(|t| !t.is_finished()),
            "a waiter finished while its round could not have"
        );
        disk.cut.store(true, Ordering::SeqCst);
        drop(held);
        for task in tasks {
            let result = task.join().unwrap();
            assert!(
                result.is_err(),
                "a future was acknowledged on a failed disk"
            );
        }
        for thread in threads {
            assert!(thread.join().unwrap().is_err(), "a wait was acknowledged");
        }
        let late = block_on(late);
        assert!(
            late.is_err(),
            "a future awaited after the failure was acknowledged"
        );
        let refused = db.set("c".into(), "3".to_string()).unwrap_err();
        assert!(matches!(refused, Error::Storage(_)), "{refused}");
    });
}

/// A store on a stand-in disk the test can hold (`disk.files`) or break, after a first write:
/// that write also reserves a block of indices, with a sync of its own, which must not happen
/// while the test holds the disk.
fn db_on_a_disk_after_a_first_write() -> (tempfile::TempDir, Arc<Disk>, Db) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let db: Db = Db::open(dir.path(), options().create_segment(Disk::creator(&disk))).unwrap();
    db.set("first".into(), "0".to_string())
        .unwrap()
        .wait()
        .unwrap();
    (dir, disk, db)
}

/// A round whose I/O panics fails the log like an I/O error: the waiter gets the error instead
/// of sleeping for ever behind a round that never ends, and later writes are refused.
#[test]
fn a_panic_in_a_rounds_io_fails_the_log_instead_of_hanging_it() {
    within(Duration::from_secs(30), || {
        let (_dir, disk, db) = db_on_a_disk_after_a_first_write();
        disk.panic_on_sync.store(true, Ordering::SeqCst);
        let failed = db.set("k".into(), "v".to_string()).unwrap().wait();
        assert!(failed.is_err(), "acknowledged through a panicked sync");
        let refused = db.set("c".into(), "3".to_string()).unwrap_err();
        assert!(matches!(refused, Error::Storage(_)), "{refused}");
    });
}

/// A waker that panics when woken (a foreign executor's bug) does not strand the other waiters
/// of its round, and the flusher keeps running rounds for later futures.
#[test]
fn a_panicking_waker_does_not_strand_the_other_waiters_of_its_round() {
    use std::task::{Context, Wake, Waker};
    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("a waker that panics");
        }
    }
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    /// Polls `pending` once with a waker that sets a flag; returns the flag.
    fn register(pending: &mut Pending<u64>) -> Arc<Flag> {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(std::pin::Pin::new(pending).poll(&mut cx).is_pending());
        flag
    }
    let (_dir, disk, db) = db_on_a_disk_after_a_first_write();
    let deadline = Instant::now() + Duration::from_secs(10);
    let wait_for = |flag: &Flag| {
        while !flag.0.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "a waiter was never woken");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Hold the disk so that both futures register before the round that covers them ends.
    let held = disk.files.lock().unwrap();
    let mut bad = db.set("bad".into(), "1".to_string()).unwrap();
    let mut good = db.set("good".into(), "2".to_string()).unwrap();
    let panics = Waker::from(Arc::new(Panics));
    let mut cx = Context::from_waker(&panics);
    assert!(std::pin::Pin::new(&mut bad).poll(&mut cx).is_pending());
    let woken = register(&mut good);
    assert_eq!(db.log().waiters(), 2, "both futures registered");
    drop(held);
    wait_for(&woken);
    // The flusher survived the panic: a later future is covered by a later round.
    let mut later = db.set("later".into(), "3".to_string()).unwrap();
    let later_woken = register(&mut later);
    wait_for(&later_woken);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(std::pin::Pin::new(&mut later).poll(&mut cx).is_ready());
}

/// A `Pending` polled once (so registered with the log) and dropped before its round ends
/// leaves no registration behind; its write stays applied and is flushed with the next round.
#[test]
fn a_pending_dropped_before_completion_is_harmless() {
    use std::task::{Context, Waker};
    let (dir, disk, db) = db_on_a_disk_after_a_first_write();
    {
        // Hold the disk so that the round cannot end while the future is polled and dropped.
        let held = disk.files.lock().unwrap();
        let mut dropped = db.set("dropped".into(), "1".to_string()).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(std::pin::Pin::new(&mut dropped).poll(&mut cx).is_pending());
        assert_eq!(db.log().waiters(), 1, "the polled future registered");
        drop(dropped);
        assert_eq!(
            db.log().waiters(),
            0,
            "the dropped future left its registration"
        );
        drop(held);
    }
    let index = within(Duration::from_secs(10), {
        let pending = db.set("after".into(), "2".to_string()).unwrap();
        move || pending.wait()
    })
    .unwrap();
    drop(db);
    let db: Db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(&*db.store().get("dropped").unwrap().value, "1");
    assert_eq!(db.store().get("after").unwrap().modify_index, index);
}
