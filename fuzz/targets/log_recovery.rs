//! `log_recovery`: `Db::open` on a data directory holding a damaged log segment and,
//! optionally, a damaged snapshot.
//!
//! The first byte of an input chooses how each file is built from the rest ([`Layout`]); a
//! snapshot, when there is one, takes the next `u16` (little-endian) bytes and the segment the
//! rest. Each file is one of:
//! - **raw**: the bytes are the whole file, header included;
//! - **body**: the harness writes a valid header (number 1), the bytes are what follows it;
//! - **framed**: the harness writes the header and frames records with valid checksums
//!   ([`framed_body`]), so that coverage reaches the record decoder and recovery's use of
//!   indices and sync markers, which bytes a fuzzer cannot checksum would never reach.
//!
//! The files go into a fresh directory as `log-0000000000000001.caskv` and
//! `snapshot-0000000000000001.caskv`, which is opened as a `Db<String, String>` with
//! automatic snapshots off. Then:
//! - **Open** returns, never panics or hangs. A refusal is `Corrupt`, `NewerFormat`, `Decode` or
//!   `Io` (never `Locked`: nobody else has the directory), and opening the directory again is
//!   refused the same way: a failed open must not leave a directory that a retry accepts.
//! - **Recovered state**: every KV entry and service has `1 <= create_index <= modify_index <=
//!   high_water` (no writer hands out index 0, and the high-water mark covers every index).
//! - **Index never reused**: a compare-and-set on a recovered key at its `modify_index` (or a
//!   create-only write when there is none) succeeds and takes an index above the recovered
//!   high-water mark; the key keeps its `create_index`. Some inputs take a snapshot next.
//! - **Idempotent recovery**: after a clean close, a second open succeeds, truncates nothing, and
//!   restores exactly the state the first left (values, flags, both indices; services by name,
//!   service and indices, their deadlines being renewed on open), with a high-water mark at or
//!   above the index written.
//!
//! The directory is created under `/dev/shm` where there is one (fsync is free on tmpfs, and
//! every open fsyncs a new segment), else under the system's temporary directory.

use std::collections::BTreeMap;
use std::mem::discriminant;
use std::path::Path;

use caskv::persist::{Options, PersistError};
use caskv::Service;

type Db = caskv::Db<String, String>;

/// The file names the harness writes: segment 1, and the snapshot that replays from it.
const SEGMENT: &str = "log-0000000000000001.caskv";
const SNAPSHOT: &str = "snapshot-0000000000000001.caskv";

/// The file header, as documented at the top of `src/persist/frame.rs`.
const HEADER_LEN: usize = 24;
const FORMAT_VERSION: u32 = 1;
const LOG_MAGIC: &[u8; 8] = b"CASKVLOG";
const SNAPSHOT_MAGIC: &[u8; 8] = b"CASKVSNP";
/// A record's 12-byte frame: length, its checksum, the payload's checksum.
const RECORD_OVERHEAD: usize = 12;

/// The masked crc32c every checksum of these files is stored as (LevelDB's mask).
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// A file header with a valid checksum (any magic and version, to forge others).
pub fn header(magic: &[u8; 8], version: u32, seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = masked_crc(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends `payload` (not empty) as one record with valid checksums.
pub fn frame_record(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!payload.is_empty());
    out.reserve(RECORD_OVERHEAD + payload.len());
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One item of a framed body, as [`framed_body`] reads it: a tag byte (taken modulo 4), a
/// `u16` little-endian length and that many bytes (fewer at the end of the input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// The bytes, appended as they are: a torn write, zeros, garbage.
    Raw = 0,
    /// One record carrying the bytes as its payload, with valid checksums (skipped if empty).
    Record = 1,
    /// A record whose payload checksum is wrong (its length is intact).
    BadPayload = 2,
    /// A record whose length checksum is wrong.
    BadLength = 3,
}

/// Builds a file body from a sequence of [`Item`]s.
pub fn framed_body(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some((&tag, rest)) = data.split_first() {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            // No room for a length: the last byte is the item.
            _ => (rest.len(), rest),
        };
        let (bytes, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        let item = match tag % 4 {
            0 => Item::Raw,
            1 => Item::Record,
            2 => Item::BadPayload,
            _ => Item::BadLength,
        };
        let at = body.len();
        match item {
            Item::Raw => body.extend_from_slice(bytes),
            _ if bytes.is_empty() => {}
            Item::Record => frame_record(bytes, &mut body),
            // The frame holds the length checksum at +4 and the payload's at +8.
            Item::BadPayload => {
                frame_record(bytes, &mut body);
                body[at + 8] ^= 1;
            }
            Item::BadLength => {
                frame_record(bytes, &mut body);
                body[at + 4] ^= 1;
            }
        }
    }
    body
}

/// How one file is built from its share of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The whole file, header included.
    Raw,
    /// A valid header from the harness, then the bytes.
    Body,
    /// A valid header from the harness, then [`framed_body`] of the bytes.
    Framed,
}

/// What the first byte of an input selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bits 0–1: the segment as raw (0), body (1) or framed (2); 3: no segment file.
    pub segment: Option<Encoding>,
    /// Bits 2–3: no snapshot (0), or the snapshot as raw (1), body (2) or framed (3).
    pub snapshot: Option<Encoding>,
    /// Bit 4: take a snapshot after the write, before the first close.
    pub snapshot_on_close: bool,
}

impl Layout {
    /// Decodes the layout byte.
    pub fn from_byte(b: u8) -> Layout {
        Layout {
            segment: match b & 3 {
                0 => Some(Encoding::Raw),
                1 => Some(Encoding::Body),
                2 => Some(Encoding::Framed),
                _ => None,
            },
            snapshot: match (b >> 2) & 3 {
                0 => None,
                1 => Some(Encoding::Raw),
                2 => Some(Encoding::Body),
                _ => Some(Encoding::Framed),
            },
            snapshot_on_close: b & 0x10 != 0,
        }
    }
}

fn build_file(magic: &[u8; 8], encoding: Encoding, bytes: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Raw => bytes.to_vec(),
        Encoding::Body | Encoding::Framed => {
            let mut file = header(magic, FORMAT_VERSION, 1).to_vec();
            match encoding {
                Encoding::Framed => file.extend_from_slice(&framed_body(bytes)),
                _ => file.extend_from_slice(bytes),
            }
            file
        }
    }
}

fn options() -> Options {
    Options::default().snapshot_after_bytes(0).services(true)
}

/// A scratch directory, on tmpfs where there is one.
fn scratch() -> tempfile::TempDir {
    let prefix = "caskv-log-recovery-";
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::Builder::new().prefix(prefix).tempdir())
        .expect("a scratch directory")
}

/// Key → (value, flags, modify_index, create_index).
type KvState = BTreeMap<String, (String, u64, u64, u64)>;
/// (service, modify_index, create_index), sorted by name (deadlines left out: renewed on open).
type ServiceState = Vec<(Service, u64, u64)>;

fn kv_state(db: &Db) -> KvState {
    db.store()
        .entries()
        .into_iter()
        .map(|(k, e)| {
            (
                k,
                (e.value.clone(), e.flags, e.modify_index, e.create_index),
            )
        })
        .collect()
}

fn service_state(db: &Db) -> ServiceState {
    // Restored registrations get a fresh TTL, so `list` (which reaps expired ones) sees them
    // all.
    db.registry()
        .expect("opened with services")
        .list()
        .into_iter()
        .map(|s| (s.service, s.modify_index, s.create_index))
        .collect()
}

/// A refusal must name damage, a newer format, a bad key or value, or an I/O error.
fn check_refusal(e: &PersistError) {
    match e {
        PersistError::Corrupt { .. }
        | PersistError::NewerFormat { .. }
        | PersistError::Decode { .. }
        | PersistError::Io { .. } => {}
        other => panic!("open refused the directory with an unexpected error: {other:?}"),
    }
}

/// Replays one input: see the module docs. Panics on any violation.
pub fn run(data: &[u8]) {
    let Some((&layout, rest)) = data.split_first() else {
        return;
    };
    let layout = Layout::from_byte(layout);
    let (snapshot, segment) = match layout.snapshot {
        None => (&[][..], rest),
        Some(_) => {
            let (len, rest) = match rest {
                [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
                _ => (0, rest),
            };
            rest.split_at(len.min(rest.len()))
        }
    };

    let scratch = scratch();
    let dir = scratch.path();
    if let Some(encoding) = layout.snapshot {
        let file = build_file(SNAPSHOT_MAGIC, encoding, snapshot);
        std::fs::write(dir.join(SNAPSHOT), file).expect("write the snapshot");
    }
    if let Some(encoding) = layout.segment {
        let file = build_file(LOG_MAGIC, encoding, segment);
        std::fs::write(dir.join(SEGMENT), file).expect("write the segment");
    }
    check_directory(dir, layout.snapshot_on_close);
}

fn check_directory(dir: &Path, snapshot_on_close: bool) {
    let db = match Db::open(dir, options()) {
        Ok(db) => db,
        Err(first) => {
            check_refusal(&first);
            match Db::open(dir, options()) {
                Ok(_) => panic!("open refused the directory ({first}), then accepted it"),
                Err(again) => assert_eq!(
                    discriminant(&again),
                    discriminant(&first),
                    "open refused the directory twice for different reasons: {first}, then {again}"
                ),
            }
            return;
        }
    };

    let high_water = db.recovery().expect("on disk").high_water;
    let kv = kv_state(&db);
    let services = service_state(&db);
    let indices = kv
        .iter()
        .map(|(k, v)| (format!("key {k:?}"), v.2, v.3))
        .chain(
            services
                .iter()
                .map(|(s, m, c)| (format!("service {:?}", s.name), *m, *c)),
        );
    for (what, modify, create) in indices {
        assert!(
            1 <= create && create <= modify && modify <= high_water,
            "recovered {what} with create_index {create}, modify_index {modify}, \
             high-water mark {high_water}"
        );
    }

    // A CAS at the recovered index must succeed, and take an index never handed out before.
    let (key, expected, create) = match kv.iter().next() {
        Some((k, v)) => (k.clone(), v.2, Some(v.3)),
        None => ("fuzz".to_string(), 0, None),
    };
    let index = db
        .set_cas(key.clone(), "written".to_string(), expected)
        .unwrap_or_else(|e| panic!("set_cas({key:?}, at {expected}) after recovery: {e:?}"))
        .wait()
        .unwrap_or_else(|e| panic!("the write after recovery is not durable: {e}"));
    assert!(
        index > high_water,
        "a write after recovery took index {index}, at or below the high-water mark {high_water}"
    );
    let entry = db.store().get(&key).expect("the key just written");
    assert_eq!(
        (entry.modify_index, entry.create_index),
        (index, create.unwrap_or(index)),
        "the key written after recovery"
    );
    if snapshot_on_close {
        db.snapshot()
            .unwrap_or_else(|e| panic!("snapshot of a recovered store: {e}"));
    }
    let kv = kv_state(&db);
    let services = service_state(&db);
    drop(db);

    let db = Db::open(dir, options())
        .unwrap_or_else(|e| panic!("the second open failed after the first succeeded: {e}"));
    assert_eq!(
        db.recovery().expect("on disk").truncated_bytes,
        0,
        "the second open truncated a log the first had closed cleanly"
    );
    assert!(
        db.recovery().expect("on disk").high_water >= index,
        "the second open resumes at {} although index {index} was handed out",
        db.recovery().expect("on disk").high_water
    );
    assert_eq!(
        kv_state(&db),
        kv,
        "the second open restored another KV state"
    );
    assert_eq!(
        service_state(&db),
        services,
        "the second open restored other services"
    );
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// The seed corpus: real logs and snapshots written by a `Db`, whole, cut short and with
/// a bit flipped, in each layout. `tests/fuzz_corpus.rs` replays them, and writes them into
/// `fuzz/corpus/log_recovery/` when asked
/// (`CASKV_WRITE_SEEDS=1 cargo test --test fuzz_corpus log_recovery_seeds`). Registrations carry
/// their deadline (the clock at writing), so the files differ from run to run in those bytes
/// only.
#[cfg(test)]
pub mod seed {
    use std::collections::BTreeMap;

    use caskv::persist::Pending;
    use caskv::{Op, Service};

    use super::{
        header, masked_crc, options, scratch, Db, Encoding, Item, Layout, FORMAT_VERSION,
        HEADER_LEN, LOG_MAGIC, RECORD_OVERHEAD, SEGMENT,
    };

    impl Layout {
        /// The layout byte (the inverse of [`Layout::from_byte`]).
        pub fn to_byte(self) -> u8 {
            let segment = match self.segment {
                Some(Encoding::Raw) => 0,
                Some(Encoding::Body) => 1,
                Some(Encoding::Framed) => 2,
                None => 3,
            };
            let snapshot = match self.snapshot {
                None => 0,
                Some(Encoding::Raw) => 1,
                Some(Encoding::Body) => 2,
                Some(Encoding::Framed) => 3,
            };
            segment | snapshot << 2 | u8::from(self.snapshot_on_close) << 4
        }

        /// A fuzz input: this layout with a snapshot's and a segment's bytes (the inverse of
        /// the split in [`run`](super::run)).
        pub fn input(self, snapshot: &[u8], segment: &[u8]) -> Vec<u8> {
            let mut input = vec![self.to_byte()];
            if self.snapshot.is_some() {
                let len =
                    u16::try_from(snapshot.len()).expect("a snapshot input of at most 64 KiB");
                input.extend_from_slice(&len.to_le_bytes());
                input.extend_from_slice(snapshot);
            }
            input.extend_from_slice(segment);
            input
        }
    }

    /// The payloads of the valid records at the start of `body` (a file after its header), each
    /// with its offset in the file, up to the first record that is not valid.
    pub fn records(body: &[u8]) -> Vec<(usize, &[u8])> {
        let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let mut out = Vec::new();
        let mut o = 0;
        while let Some(head) = body.get(o..o + RECORD_OVERHEAD) {
            let len = word(head, 0) as usize;
            let Some(payload) = body.get(o + RECORD_OVERHEAD..o + RECORD_OVERHEAD + len) else {
                break;
            };
            if len == 0
                || masked_crc(&head[0..4]) != word(head, 4)
                || masked_crc(payload) != word(head, 8)
            {
                break;
            }
            out.push((HEADER_LEN + o, payload));
            o += RECORD_OVERHEAD + len;
        }
        out
    }

    /// Appends one item of a framed body to a fuzz input (the inverse of
    /// [`framed_body`](super::framed_body)).
    pub fn push_item(input: &mut Vec<u8>, item: Item, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).expect("an item holds at most 64 KiB");
        input.push(item as u8);
        input.extend_from_slice(&len.to_le_bytes());
        input.extend_from_slice(bytes);
    }

    /// A body's records as framed items, the one at position `damaged` (if any) as `item`.
    fn items(body: &[u8], damaged: Option<(usize, Item)>) -> Vec<u8> {
        let mut input = Vec::new();
        for (i, (_, payload)) in records(body).into_iter().enumerate() {
            let item = match damaged {
                Some((at, item)) if at == i => item,
                _ => Item::Record,
            };
            push_item(&mut input, item, payload);
        }
        input
    }

    /// Runs `writes` on a fresh directory, closes it, and returns its files by name.
    fn written(writes: impl FnOnce(&Db)) -> BTreeMap<String, Vec<u8>> {
        let scratch = scratch();
        let db = Db::open(scratch.path(), options()).expect("open a fresh directory");
        writes(&db);
        drop(db);
        std::fs::read_dir(scratch.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name() != "LOCK")
            .map(|e| {
                let name = e.file_name().into_string().unwrap();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    fn wait<E: std::fmt::Debug>(pending: Result<Pending<u64>, E>) -> u64 {
        pending.unwrap().wait().unwrap()
    }

    /// Every kind of KV write: set, with flags, CAS, a batch with a delete and a check,
    /// compare-and-set, delete-CAS, update, and a longer value.
    fn kv_writes(db: &Db) {
        let a = wait(db.set("a".into(), "1".to_string()));
        wait(db.set_with_flags("b".into(), "2".to_string(), 7));
        wait(db.set_cas("a".into(), "1b".to_string(), a));
        wait(db.batch(vec![
            Op::set("c".into(), "3".to_string()),
            Op::delete("b".into()),
            Op::check_index("zz".into(), 0),
        ]));
        let d = db
            .compare_and_set("d".into(), None, Some("4".to_string()))
            .unwrap()
            .wait()
            .unwrap()
            .unwrap();
        wait(db.delete_cas("d", d));
        wait(db.update("e/1".into(), |v| {
            format!("{}+", v.map_or("", String::as_str))
        }));
        wait(db.set("e/2".into(), "x".repeat(100)));
    }

    fn service(name: &str, port: u16) -> Service {
        Service {
            name: name.into(),
            address: "10.0.0.1".into(),
            port,
            tags: vec!["primary".into()],
            meta: [("zone".to_string(), "a".to_string())].into(),
        }
    }

    fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        bytes[at] ^= 0x10;
        bytes
    }

    fn layout(segment: Option<Encoding>, snapshot: Option<Encoding>, on_close: bool) -> Layout {
        Layout {
            segment,
            snapshot,
            snapshot_on_close: on_close,
        }
    }

    /// The seeds, `(file name, input)`.
    pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        use Encoding::{Body, Framed, Raw};

        let kv = written(kv_writes).remove(SEGMENT).unwrap();
        let body = &kv[HEADER_LEN..];
        let starts: Vec<usize> = records(body).iter().map(|(at, _)| *at).collect();
        let last = *starts.last().unwrap();
        let services = written(|db| {
            wait(db.register(service("web", 80), Some(0)));
            wait(db.register(service("db", 5432), None));
            wait(db.set("k".into(), "v".to_string()));
            wait(db.register(service("web", 8080), None));
            wait(db.deregister("db", None));
        })
        .remove(SEGMENT)
        .unwrap();
        // A snapshot (number 2, after the rotation) and the segment after it, as body files:
        // the harness's headers number them 1.
        let pair = written(|db| {
            kv_writes(db);
            db.snapshot().unwrap();
            wait(db.set("a".into(), "after".to_string()));
            wait(db.delete("c"));
            wait(db.register(service("web", 80), None));
        });
        let snapshot = &pair["snapshot-0000000000000002.caskv"][HEADER_LEN..];
        let after = &pair["log-0000000000000002.caskv"][HEADER_LEN..];

        let raw = layout(Some(Raw), None, false);
        let framed = layout(Some(Framed), None, false);
        let mut newer = header(LOG_MAGIC, FORMAT_VERSION + 1, 1).to_vec();
        newer.extend_from_slice(body);
        let mut torn_zeros = items(body, None);
        push_item(&mut torn_zeros, Item::Raw, &[0; 40]);
        // A sync marker (kind 7) whose length checksum is wrong, after the last record.
        let mut bad_marker = items(body, None);
        push_item(
            &mut bad_marker,
            Item::BadLength,
            &[7, 0, 0, 0, 0, 0, 0, 0, 0],
        );

        vec![
            ("raw_empty", raw.input(&[], &[])),
            ("raw_kv", raw.input(&[], &kv)),
            (
                "raw_kv_torn_in_payload",
                raw.input(&[], &kv[..kv.len() - 5]),
            ),
            ("raw_kv_torn_in_frame", raw.input(&[], &kv[..last + 7])),
            ("raw_kv_torn_header", raw.input(&[], &kv[..10])),
            (
                "raw_kv_flip_early",
                raw.input(&[], &flip(&kv, starts[2] + 14)),
            ),
            ("raw_kv_flip_last", raw.input(&[], &flip(&kv, last + 14))),
            ("raw_kv_newer_format", raw.input(&[], &newer)),
            ("raw_services", raw.input(&[], &services)),
            ("body_kv", layout(Some(Body), None, false).input(&[], body)),
            (
                "framed_kv_snapshot_on_close",
                layout(Some(Framed), None, true).input(&[], &items(body, None)),
            ),
            ("framed_kv_torn_zeros", framed.input(&[], &torn_zeros)),
            (
                "framed_kv_damaged_middle",
                framed.input(&[], &items(body, Some((3, Item::BadPayload)))),
            ),
            (
                "framed_kv_bad_length_marker",
                framed.input(&[], &bad_marker),
            ),
            (
                "body_snapshot_pair",
                layout(Some(Body), Some(Body), false).input(snapshot, after),
            ),
            (
                "framed_snapshot_pair_snapshot_on_close",
                layout(Some(Framed), Some(Framed), true)
                    .input(&items(snapshot, None), &items(after, None)),
            ),
            (
                "snapshot_without_segment",
                layout(None, Some(Body), false).input(snapshot, &[]),
            ),
        ]
    }
}
