//! On-disk framing for log segments and snapshot files: a checksummed file header, then
//! checksummed, length-prefixed records, and a scanner that tells a torn tail from corruption.
//!
//! This module knows nothing of what a payload holds; to it every payload is opaque bytes.
//!
//! # Format
//! Every file starts with a 24-byte header, all integers little-endian:
//!
//! | bytes  | field                                                                              |
//! |--------|------------------------------------------------------------------------------------|
//! | 0..8   | magic: `CASKVLOG` (log segment) or `CASKVSNP` (snapshot)                           |
//! | 8..12  | format version ([`FORMAT_VERSION`])                                                |
//! | 12..20 | sequence number: the segment's number (snapshot: first segment to replay after it) |
//! | 20..24 | masked crc32c of bytes 0..20                                                       |
//!
//! The body after it is a run of records, each a 12-byte header and a payload:
//!
//! | bytes   | field                                           |
//! |---------|-------------------------------------------------|
//! | 0..4    | payload length `len`, 1 ..= [`MAX_RECORD_LEN`]  |
//! | 4..8    | masked crc32c of bytes 0..4                     |
//! | 8..12   | masked crc32c of the payload                    |
//! | 12..    | payload, `len` bytes                            |
//!
//! # Why the format is this way
//! - **A checksum of its own on the length.** With one checksum over length and payload, a
//!   damaged length field makes the reader look for the payload's end in the wrong place: a
//!   length that grew points past the end of the file and reads exactly like a record whose
//!   write was cut short, so damage in the middle of a log would be taken for a torn tail and
//!   everything after it dropped without a word. The length checksum lets the scanner trust a
//!   length before it acts on it; a length that fails it is damage, whatever it points at.
//! - **Zero is never a valid length**, and every checksum is **masked** (the LevelDB/RocksDB
//!   rotate-and-add, [`mask`]). After a crash a file can be longer than what reached it, the
//!   gap reading as zeros; with the mask, and with length 0 out of range, a run of zeros never
//!   reads as a record. The mask also follows LevelDB's advice for checksums stored in data
//!   that is itself checksummed (a record framed inside a payload).
//! - **The forward search decides torn versus corrupt.** A crash can only cut the *last* write
//!   short, so a torn tail is damage with nothing intact after it. When the scanner meets
//!   damage and the caller says the tail may be torn, it looks for any complete, valid record
//!   further on. If it finds one, the damage sits in front of data that was once durable, and
//!   calling it a torn tail would silently drop that data: it is [`ScanEnd::Corrupt`]. Only
//!   damage with nothing valid behind it is [`ScanEnd::TornTail`]. A false "valid record" needs
//!   both a 32-bit length checksum and a 32-bit payload checksum to match by chance; the
//!   search checks the cheap length checksum first and reads a payload only when that passes.
//!   The premise is the writer's to keep: only the last record may be unsynced when a crash
//!   hits. Pages of unsynced writes can reach the disk out of order, so a writer with several
//!   records in flight can leave a hole followed by an intact record that was never
//!   acknowledged, and this scanner reports that as corruption (safe, but the file will not
//!   open). Sync before starting the next record, or write a group commit as one record.
//! - **The search skips the damaged record's own extent when its length is intact.** If the
//!   length passes its checksum, the bytes up to the end of that record are its payload, just as
//!   they would be for a valid record, and are not searched: a payload that happens to embed a
//!   framed record (a user's value can be anything) must not turn an ordinary torn write into
//!   "corruption" that refuses to open. Only a length that fails its checksum, or is out of
//!   range, makes the search start at the next byte.

use std::fmt;

/// Length of a file header in bytes.
pub(crate) const HEADER_LEN: usize = 24;

/// The format version this build writes; a header with a larger one is refused.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Bytes a record adds in front of its payload: length, length checksum, payload checksum.
pub(crate) const RECORD_OVERHEAD: usize = 12;

/// The largest payload a record may carry (64 MiB); a larger length in a file is damage.
pub(crate) const MAX_RECORD_LEN: usize = 64 << 20;

/// Added after the rotation in [`mask`]; the constant LevelDB and RocksDB use.
const MASK_DELTA: u32 = 0xa282_ead8;

/// Masks a crc32c so that data which embeds its own checksum, or a run of zero bytes, does not
/// check as valid: rotate right by 15 bits, then add [`MASK_DELTA`] (LevelDB's `crc32c::Mask`).
fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// The masked crc32c of `bytes`, the form every checksum in these files is stored in.
fn masked_crc(bytes: &[u8]) -> u32 {
    mask(crc32c::crc32c(bytes))
}

/// Reads a little-endian `u32` at `at`; the caller has checked that four bytes are there.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Which kind of file a header opens; each kind has its own magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A log segment (`CASKVLOG`).
    Log,
    /// A snapshot (`CASKVSNP`).
    Snapshot,
}

impl FileKind {
    /// The eight bytes a file of this kind starts with.
    const fn magic(self) -> &'static [u8; 8] {
        match self {
            FileKind::Log => b"CASKVLOG",
            FileKind::Snapshot => b"CASKVSNP",
        }
    }
}

/// A decoded file header whose checksum, magic and version were all accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The format version the file was written with; at most [`FORMAT_VERSION`].
    pub(crate) version: u32,
    /// The segment number; for a snapshot, the first segment to replay after it.
    pub(crate) seq: u64,
}

/// Why a file header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes: the file was cut short before its header was whole.
    Short,
    /// The header is intact (its checksum matches) but opens another kind of file.
    BadMagic,
    /// The checksum over the first 20 bytes does not match: the header is damaged, or the
    /// file is not a caskv file at all.
    BadChecksum,
    /// The header is intact but written by a newer format than this build reads.
    NewerVersion {
        /// The version in the file, greater than [`FORMAT_VERSION`].
        found: u32,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Short => {
                write!(f, "file header is incomplete ({HEADER_LEN} bytes needed)")
            }
            HeaderError::BadMagic => write!(f, "file header is for another kind of file"),
            HeaderError::BadChecksum => {
                write!(
                    f,
                    "file header checksum mismatch (damaged, or not a caskv file)"
                )
            }
            HeaderError::NewerVersion { found } => write!(
                f,
                "file format version {found} is newer than the supported version {FORMAT_VERSION}"
            ),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Builds a header from its fields, with its checksum; tests use it to forge other versions.
fn build_header(magic: &[u8; 8], version: u32, seq: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(magic);
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = masked_crc(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Encodes the header of a file of `kind` with sequence number `seq`, at [`FORMAT_VERSION`].
pub(crate) fn encode_header(kind: FileKind, seq: u64) -> [u8; HEADER_LEN] {
    build_header(kind.magic(), FORMAT_VERSION, seq)
}

/// Decodes the header at the start of `bytes` (bytes past [`HEADER_LEN`] are ignored) and
/// checks that it opens a file of `kind`.
///
/// The checksum is checked before the magic and the version, so a damaged header always reads
/// as [`HeaderError::BadChecksum`], and [`HeaderError::BadMagic`] means an intact header of the
/// other kind.
pub(crate) fn decode_header(bytes: &[u8], kind: FileKind) -> Result<Header, HeaderError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(HeaderError::Short);
    };
    if masked_crc(&header[0..20]) != read_u32(header, 20) {
        return Err(HeaderError::BadChecksum);
    }
    if header[0..8] != kind.magic()[..] {
        return Err(HeaderError::BadMagic);
    }
    let version = read_u32(header, 8);
    if version > FORMAT_VERSION {
        return Err(HeaderError::NewerVersion { found: version });
    }
    let seq = u64::from_le_bytes(header[12..20].try_into().expect("eight bytes"));
    Ok(Header { version, seq })
}

/// Appends one record carrying `payload` (its 12-byte header, then the payload) to `out`.
///
/// # Panics
/// If `payload` is empty or longer than [`MAX_RECORD_LEN`]: the scanner would read such a
/// record as damage, so writing one would lose it.
pub(crate) fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        (1..=MAX_RECORD_LEN).contains(&payload.len()),
        "record payload must be 1..={MAX_RECORD_LEN} bytes, got {}",
        payload.len()
    );
    let len = (payload.len() as u32).to_le_bytes();
    out.reserve(RECORD_OVERHEAD + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The records a [`scan`] read, and how the body ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scan<'a> {
    /// Every valid record before the end or the first damage, in order: the offset of the
    /// record's start within the body, and its payload.
    pub(crate) records: Vec<(usize, &'a [u8])>,
    /// How the body ended.
    pub(crate) end: ScanEnd,
}

/// How a scanned body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The last record ends exactly at the end of the body.
    Clean,
    /// Damage at `at` with no valid record anywhere after it: a write cut short by a crash.
    /// The caller may truncate the file to `at`, dropping `dropped` bytes.
    TornTail {
        /// Offset within the body where the damaged record starts.
        at: usize,
        /// Bytes from `at` to the end of the body.
        dropped: usize,
    },
    /// Damage at `at` that is not a torn tail: the caller said the tail cannot be torn, or a
    /// valid record follows the damage. Nothing after `at` can be trusted or dropped silently.
    Corrupt {
        /// Offset within the body where the damaged record starts.
        at: usize,
        /// What was wrong with the record at `at`, for a person to read.
        reason: &'static str,
    },
}

/// Why the record at some offset is damaged, and where a search for intact data after it starts.
struct Damage {
    /// What was wrong, for [`ScanEnd::Corrupt`].
    reason: &'static str,
    /// The first offset that may hold a record after this one: the end of the record if its
    /// length passed its checksum and is in range, the next byte otherwise.
    search_from: usize,
}

/// Checks the record starting at `o` (`o <= body.len()`) and returns its payload if it is valid.
///
/// The length and its checksum are checked before the payload is read, which keeps the
/// forward search in [`scan`] cheap: almost every position fails on four bytes.
fn record_at(body: &[u8], o: usize) -> Result<&[u8], Damage> {
    let Some(head) = body.get(o..o + RECORD_OVERHEAD) else {
        return Err(Damage {
            reason: "incomplete record header",
            search_from: o + 1,
        });
    };
    if masked_crc(&head[0..4]) != read_u32(head, 4) {
        return Err(Damage {
            reason: "record length checksum mismatch",
            search_from: o + 1,
        });
    }
    let len = read_u32(head, 0) as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(Damage {
            reason: "record length out of range",
            search_from: o + 1,
        });
    }
    // The length is trusted from here on, so the record's own extent is not searched. No
    // overflow: `o <= body.len() <= isize::MAX` and `len <= 64 MiB`.
    let end = o + RECORD_OVERHEAD + len;
    let Some(payload) = body.get(o + RECORD_OVERHEAD..end) else {
        return Err(Damage {
            reason: "record extends past end of file",
            search_from: end,
        });
    };
    if masked_crc(payload) != read_u32(head, 8) {
        return Err(Damage {
            reason: "payload checksum mismatch",
            search_from: end,
        });
    }
    Ok(payload)
}

/// Reads the records of `body`, the bytes of a file after its header, up to its end or its
/// first damaged record.
///
/// `tail_may_be_torn` says whether the file may end in a write cut short by a crash (the
/// newest log segment); if so, damage with no valid record anywhere after it is a
/// [`ScanEnd::TornTail`]. Damage followed by a valid record, or any damage when
/// `tail_may_be_torn` is false, is [`ScanEnd::Corrupt`]. The records before the damage are
/// returned in every case.
pub(crate) fn scan(body: &[u8], tail_may_be_torn: bool) -> Scan<'_> {
    let mut records = Vec::new();
    let mut o = 0;
    while o < body.len() {
        match record_at(body, o) {
            Ok(payload) => {
                records.push((o, payload));
                o += RECORD_OVERHEAD + payload.len();
            }
            Err(damage) => {
                let end = if tail_may_be_torn && !valid_record_from(body, damage.search_from) {
                    ScanEnd::TornTail {
                        at: o,
                        dropped: body.len() - o,
                    }
                } else {
                    ScanEnd::Corrupt {
                        at: o,
                        reason: damage.reason,
                    }
                };
                return Scan { records, end };
            }
        }
    }
    Scan {
        records,
        end: ScanEnd::Clean,
    }
}

/// The valid records after the damaged record at `at`: found by the same search that tells a
/// torn tail from corruption (starting past the damaged record's own extent when its length is
/// intact), each one skipped whole once found. Recovery reads the sync markers among them.
pub(crate) fn salvage(body: &[u8], at: usize) -> Vec<(usize, &[u8])> {
    let mut p = match record_at(body, at) {
        Ok(payload) => at + RECORD_OVERHEAD + payload.len(),
        Err(damage) => damage.search_from,
    };
    let mut found = Vec::new();
    while p + RECORD_OVERHEAD < body.len() {
        match record_at(body, p) {
            Ok(payload) => {
                found.push((p, payload));
                p += RECORD_OVERHEAD + payload.len();
            }
            Err(_) => p += 1,
        }
    }
    found
}

/// Whether a complete, valid record starts at any offset from `from` on.
fn valid_record_from(body: &[u8], from: usize) -> bool {
    // A record needs its header and at least one payload byte.
    let last_start = body.len().saturating_sub(RECORD_OVERHEAD + 1);
    (from..=last_start).any(|p| record_at(body, p).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (xorshift64*), so the tests need no dev-dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Payloads of varied sizes: one byte, 1000 bytes, and random-ish ones.
    fn payloads() -> Vec<Vec<u8>> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        vec![
            vec![0x42],
            (0..1000u32).map(|i| (i % 251) as u8).collect(),
            rng.bytes(37),
            rng.bytes(255),
            vec![0; 3],
            rng.bytes(300),
        ]
    }

    /// Encodes `payloads` and returns the body and each record's start offset.
    fn body_of(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut body = Vec::new();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(body.len());
            encode_record(p, &mut body);
        }
        (body, starts)
    }

    /// The first `n` records as [`Scan::records`] would list them.
    fn prefix<'a>(payloads: &'a [Vec<u8>], starts: &[usize], n: usize) -> Vec<(usize, &'a [u8])> {
        starts
            .iter()
            .zip(payloads)
            .take(n)
            .map(|(&s, p)| (s, p.as_slice()))
            .collect()
    }

    #[test]
    fn crc32c_is_castagnoli_and_mask_matches_leveldb() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, worked by hand: 0xacf02468 + 0xa282ead8.
        assert_eq!(mask(0x1234_5678), 0x4f73_0f40);
    }

    #[test]
    fn header_round_trip() {
        for kind in [FileKind::Log, FileKind::Snapshot] {
            for seq in [0, 1, 7, u64::from(u32::MAX) + 1, u64::MAX] {
                let header = encode_header(kind, seq);
                assert_eq!(&header[0..8], kind.magic());
                assert_eq!(
                    decode_header(&header, kind),
                    Ok(Header {
                        version: FORMAT_VERSION,
                        seq
                    })
                );
                // Bytes after the header are ignored.
                let mut file = header.to_vec();
                file.extend_from_slice(b"body");
                assert_eq!(
                    decode_header(&file, kind),
                    Ok(Header {
                        version: FORMAT_VERSION,
                        seq
                    })
                );
            }
        }
    }

    #[test]
    fn header_short() {
        let header = encode_header(FileKind::Log, 5);
        for n in 0..HEADER_LEN {
            assert_eq!(
                decode_header(&header[..n], FileKind::Log),
                Err(HeaderError::Short)
            );
        }
    }

    #[test]
    fn header_bad_magic() {
        let forged = build_header(b"NOTCASKV", FORMAT_VERSION, 5);
        assert_eq!(
            decode_header(&forged, FileKind::Log),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            decode_header(&forged, FileKind::Snapshot),
            Err(HeaderError::BadMagic)
        );
    }

    #[test]
    fn header_of_the_other_kind_is_bad_magic() {
        let log = encode_header(FileKind::Log, 5);
        let snapshot = encode_header(FileKind::Snapshot, 5);
        assert_eq!(
            decode_header(&log, FileKind::Snapshot),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            decode_header(&snapshot, FileKind::Log),
            Err(HeaderError::BadMagic)
        );
    }

    #[test]
    fn header_every_single_bit_flip_is_bad_checksum() {
        for kind in [FileKind::Log, FileKind::Snapshot] {
            let header = encode_header(kind, 0x0102_0304_0506_0708);
            for bit in 0..HEADER_LEN * 8 {
                let mut damaged = header;
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    decode_header(&damaged, kind),
                    Err(HeaderError::BadChecksum),
                    "bit {bit}"
                );
            }
        }
    }

    #[test]
    fn header_newer_version_is_refused() {
        let newer = build_header(FileKind::Log.magic(), FORMAT_VERSION + 1, 9);
        assert_eq!(
            decode_header(&newer, FileKind::Log),
            Err(HeaderError::NewerVersion {
                found: FORMAT_VERSION + 1
            })
        );
        // The version is checked only once the checksum passes: damage is not a version.
        let mut damaged = newer;
        damaged[12] ^= 1;
        assert_eq!(
            decode_header(&damaged, FileKind::Log),
            Err(HeaderError::BadChecksum)
        );
    }

    #[test]
    fn record_round_trip_varied_sizes() {
        let payloads = payloads();
        let (body, starts) = body_of(&payloads);
        let total: usize = payloads.iter().map(|p| RECORD_OVERHEAD + p.len()).sum();
        assert_eq!(body.len(), total);
        for t in [true, false] {
            let scan = scan(&body, t);
            assert_eq!(scan.end, ScanEnd::Clean);
            assert_eq!(scan.records, prefix(&payloads, &starts, payloads.len()));
        }
    }

    #[test]
    fn empty_body_is_clean() {
        assert_eq!(
            scan(&[], false),
            Scan {
                records: vec![],
                end: ScanEnd::Clean
            }
        );
        assert_eq!(
            scan(&[], true),
            Scan {
                records: vec![],
                end: ScanEnd::Clean
            }
        );
    }

    #[test]
    #[should_panic(expected = "record payload must be")]
    fn encode_empty_payload_panics() {
        encode_record(&[], &mut Vec::new());
    }

    #[test]
    fn all_zero_record_header_is_rejected() {
        // The mask is what makes this hold: the masked crc32c of four zero bytes is not zero.
        assert_ne!(masked_crc(&[0; 4]), 0);
        assert_ne!(masked_crc(&[]), 0);
        let zeros = [0u8; RECORD_OVERHEAD];
        let scan = scan(&zeros, false);
        assert!(scan.records.is_empty());
        assert_eq!(
            scan.end,
            ScanEnd::Corrupt {
                at: 0,
                reason: "record length checksum mismatch"
            }
        );
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let payloads = payloads();
        let (mut body, starts) = body_of(&payloads);
        let at = body.len();
        body.extend_from_slice(&[0; 100]);
        let scan = scan(&body, true);
        assert_eq!(scan.end, ScanEnd::TornTail { at, dropped: 100 });
        assert_eq!(scan.records, prefix(&payloads, &starts, payloads.len()));
    }

    #[test]
    fn truncate_at_every_offset() {
        let payloads = payloads();
        let (body, starts) = body_of(&payloads);
        for cut in 0..=body.len() {
            let whole = starts
                .iter()
                .zip(&payloads)
                .filter(|(&s, p)| s + RECORD_OVERHEAD + p.len() <= cut)
                .count();
            let boundary = if whole == payloads.len() {
                body.len()
            } else {
                starts[whole]
            };
            let expected_records = prefix(&payloads, &starts, whole);

            let torn = scan(&body[..cut], true);
            assert_eq!(torn.records, expected_records, "cut {cut}");
            if cut == boundary {
                assert_eq!(torn.end, ScanEnd::Clean, "cut {cut}");
            } else {
                assert_eq!(
                    torn.end,
                    ScanEnd::TornTail {
                        at: boundary,
                        dropped: cut - boundary
                    },
                    "cut {cut}"
                );
            }

            let strict = scan(&body[..cut], false);
            assert_eq!(strict.records, expected_records, "cut {cut}");
            if cut == boundary {
                assert_eq!(strict.end, ScanEnd::Clean, "cut {cut}");
            } else {
                let reason = if cut - boundary < RECORD_OVERHEAD {
                    "incomplete record header"
                } else {
                    "record extends past end of file"
                };
                assert_eq!(
                    strict.end,
                    ScanEnd::Corrupt {
                        at: boundary,
                        reason
                    },
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn flip_every_bit() {
        let payloads = payloads();
        let (body, starts) = body_of(&payloads);
        let last = payloads.len() - 1;
        for bit in 0..body.len() * 8 {
            let mut damaged = body.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            // The record the flipped bit lies in.
            let hit = starts.iter().rposition(|&s| s <= bit / 8).unwrap();
            let expected_records = prefix(&payloads, &starts, hit);

            let torn = scan(&damaged, true);
            // Never a wrong state: only the intact records before the damage come back.
            assert_eq!(torn.records, expected_records, "bit {bit}");
            if hit == last {
                let dropped = body.len() - starts[hit];
                assert_eq!(
                    torn.end,
                    ScanEnd::TornTail {
                        at: starts[hit],
                        dropped
                    },
                    "bit {bit}"
                );
            } else {
                assert!(
                    matches!(torn.end, ScanEnd::Corrupt { at, .. } if at == starts[hit]),
                    "bit {bit}: {:?}",
                    torn.end
                );
            }

            let strict = scan(&damaged, false);
            assert_eq!(strict.records, expected_records, "bit {bit}");
            assert!(
                matches!(strict.end, ScanEnd::Corrupt { at, .. } if at == starts[hit]),
                "bit {bit}: {:?}",
                strict.end
            );
        }
    }

    #[test]
    fn damage_reasons() {
        let mut body = Vec::new();
        encode_record(b"hello", &mut body);
        let corrupt = |body: &[u8]| match scan(body, false).end {
            ScanEnd::Corrupt { at: 0, reason } => reason,
            end => panic!("expected Corrupt at 0, got {end:?}"),
        };

        let mut bad_len = body.clone();
        bad_len[0] ^= 1;
        assert_eq!(corrupt(&bad_len), "record length checksum mismatch");

        let mut bad_payload = body.clone();
        bad_payload[RECORD_OVERHEAD] ^= 1;
        assert_eq!(corrupt(&bad_payload), "payload checksum mismatch");

        assert_eq!(
            corrupt(&body[..RECORD_OVERHEAD - 1]),
            "incomplete record header"
        );
        assert_eq!(
            corrupt(&body[..body.len() - 1]),
            "record extends past end of file"
        );

        // Lengths 0 and MAX_RECORD_LEN + 1 with a correct length checksum.
        for len in [0u32, MAX_RECORD_LEN as u32 + 1] {
            let mut forged = len.to_le_bytes().to_vec();
            forged.extend_from_slice(&masked_crc(&len.to_le_bytes()).to_le_bytes());
            forged.extend_from_slice(&masked_crc(b"x").to_le_bytes());
            forged.push(b'x');
            assert_eq!(corrupt(&forged), "record length out of range");
            // With nothing valid after it, it may be a torn tail.
            assert_eq!(
                scan(&forged, true).end,
                ScanEnd::TornTail {
                    at: 0,
                    dropped: forged.len()
                }
            );
        }
    }

    #[test]
    fn damage_followed_by_a_valid_record_is_corrupt() {
        let mut body = Vec::new();
        encode_record(b"first", &mut body);
        let garbage = body.len();
        body.extend_from_slice(&[0xff; 20]);
        encode_record(b"durable", &mut body);
        let scan = scan(&body, true);
        assert_eq!(scan.records, vec![(0, &b"first"[..])]);
        assert_eq!(
            scan.end,
            ScanEnd::Corrupt {
                at: garbage,
                reason: "record length checksum mismatch"
            }
        );
    }

    #[test]
    fn torn_record_whose_payload_embeds_a_frame_is_torn_not_corrupt() {
        // A user's value may itself be a framed record. When the write of a record carrying it
        // is cut short, the embedded frame lies inside the torn record's extent, which an
        // intact length rules out of the search.
        let mut inner = Vec::new();
        encode_record(b"a value that looks like a record", &mut inner);
        let mut payload = b"prefix".to_vec();
        payload.extend_from_slice(&inner);
        payload.extend_from_slice(&[7; 64]);

        let mut body = Vec::new();
        encode_record(b"first", &mut body);
        let at = body.len();
        encode_record(&payload, &mut body);
        for cut in at + RECORD_OVERHEAD + 6 + inner.len()..body.len() {
            let scan = scan(&body[..cut], true);
            assert_eq!(scan.records, vec![(0, &b"first"[..])], "cut {cut}");
            assert_eq!(
                scan.end,
                ScanEnd::TornTail {
                    at,
                    dropped: cut - at
                },
                "cut {cut}"
            );
        }
    }

    #[test]
    fn garbage_never_panics_and_never_yields_a_forged_record() {
        let mut rng = Rng(42);
        for n in 1..300 {
            let garbage = rng.bytes(n);
            for t in [true, false] {
                let scan = scan(&garbage, t);
                // Random bytes pass two 32-bit checksums with negligible probability.
                assert!(scan.records.is_empty(), "len {n}");
                assert_ne!(scan.end, ScanEnd::Clean, "len {n}");
            }
        }
    }
}
