//! What a log record or snapshot record says: the payload inside a frame (`frame.rs`).
//!
//! Every payload starts with a kind byte. Mutations carry the **resulting** version (value,
//! flags, both indices), never the operation, so replaying a key's last record restores it
//! exactly whatever came before.
//!
//! | kind | fields (little-endian; `bytes` = u32 length + bytes) |
//! |---|---|
//! | 1 set | space u8, modify_index u64, create_index u64, flags u64, key bytes, value bytes |
//! | 8 expiring set | as 1, then deadline u64 (ms since the UNIX epoch) after flags |
//! | 2 delete | space u8, index u64, key bytes |
//! | 3 batch | space u8, index u64, count u32, then per key: 1 + create u64 + flags u64 + key + value (set), 2 + create u64 + flags u64 + deadline u64 + key + value (expiring set), or 0 + key (delete) |
//! | 4 reserve | through u64: no index up to `through` may be handed out again |
//! | 5 snapshot head | high_water u64 (snapshots only, first record) |
//! | 6 snapshot end | entries u64 (snapshots only, last record) |
//! | 7 synced | through u64: this segment is durable up to that file offset (see `log.rs`) |

use super::codec::wire::{self, Reader};
use super::codec::DecodeError;

/// Which store of a data directory a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// The KV store.
    Kv = 0,
    /// The service registry.
    Services = 1,
}

impl Space {
    fn from_u8(b: u8) -> Result<Self, DecodeError> {
        match b {
            0 => Ok(Space::Kv),
            1 => Ok(Space::Services),
            other => Err(DecodeError::new(format!("unknown space {other}"))),
        }
    }
}

const SET: u8 = 1;
const DELETE: u8 = 2;
const BATCH: u8 = 3;
const RESERVE: u8 = 4;
const SNAPSHOT_HEAD: u8 = 5;
const SNAPSHOT_END: u8 = 6;
const SYNCED: u8 = 7;
const EXPIRING_SET: u8 = 8;

/// A key's version as recorded (key and value still encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawVersion<'a> {
    pub(crate) value: &'a [u8],
    pub(crate) flags: u64,
    pub(crate) modify_index: u64,
    pub(crate) create_index: u64,
    /// When it expires (ms since the UNIX epoch); 0: never.
    pub(crate) deadline: u64,
}

/// One decoded record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// Keys of `space` now hold these versions (`None`: deleted), all written at `index`.
    Writes {
        space: Space,
        index: u64,
        writes: Vec<(&'a [u8], Option<RawVersion<'a>>)>,
    },
    /// Indices up to `through` are reserved.
    Reserve { through: u64 },
    /// A snapshot's first record.
    SnapshotHead { high_water: u64 },
    /// A snapshot's last record.
    SnapshotEnd { entries: u64 },
    /// The segment holding this record is durable up to file offset `through`.
    Synced { through: u64 },
}

/// A version's fields besides its key and value, as a record carries them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    pub(crate) flags: u64,
    pub(crate) modify_index: u64,
    pub(crate) create_index: u64,
    /// 0: never expires (then the record is the older, shorter kind).
    pub(crate) deadline: u64,
}

/// Appends a set record's payload (an expiring set's when the version has a deadline).
pub(crate) fn encode_set(
    out: &mut Vec<u8>,
    space: Space,
    key: impl FnOnce(&mut Vec<u8>),
    value: impl FnOnce(&mut Vec<u8>),
    stamp: Stamp,
) {
    out.push(if stamp.deadline == 0 {
        SET
    } else {
        EXPIRING_SET
    });
    out.push(space as u8);
    wire::put_u64(out, stamp.modify_index);
    wire::put_u64(out, stamp.create_index);
    wire::put_u64(out, stamp.flags);
    if stamp.deadline != 0 {
        wire::put_u64(out, stamp.deadline);
    }
    wire::put_with(out, key);
    wire::put_with(out, value);
}

/// Appends a delete record's payload.
pub(crate) fn encode_delete(
    out: &mut Vec<u8>,
    space: Space,
    key: impl FnOnce(&mut Vec<u8>),
    index: u64,
) {
    out.push(DELETE);
    out.push(space as u8);
    wire::put_u64(out, index);
    wire::put_with(out, key);
}

/// The bytes of a batch record's header ([`encode_batch_head`]).
pub(crate) const BATCH_HEAD_LEN: usize = 1 + 1 + 8 + 4;

/// The bytes [`encode_batch_item`] writes for a key of `key_len` encoded bytes and, for a
/// write, a value of `value_len` (`None`: a delete), with a deadline or not.
pub(crate) fn batch_item_len(key_len: usize, value_len: Option<usize>, expiring: bool) -> usize {
    match value_len {
        Some(value_len) => 1 + 8 + 8 + 4 + key_len + 4 + value_len + if expiring { 8 } else { 0 },
        None => 1 + 4 + key_len,
    }
}

/// Appends a batch record's header; follow with `count` calls of [`encode_batch_item`].
pub(crate) fn encode_batch_head(out: &mut Vec<u8>, space: Space, index: u64, count: u32) {
    out.push(BATCH);
    out.push(space as u8);
    wire::put_u64(out, index);
    out.extend_from_slice(&count.to_le_bytes());
}

/// Writes an encoded value into a payload.
pub(crate) type ValueWriter<'a> = &'a dyn Fn(&mut Vec<u8>);

/// Appends one key of a batch: `version` is the value and its stamp (the batch's index is in
/// the header, not repeated), or `None` for a delete.
pub(crate) fn encode_batch_item(
    out: &mut Vec<u8>,
    key: impl FnOnce(&mut Vec<u8>),
    version: Option<(ValueWriter<'_>, Stamp)>,
) {
    match version {
        Some((value, stamp)) => {
            out.push(if stamp.deadline == 0 { 1 } else { 2 });
            wire::put_u64(out, stamp.create_index);
            wire::put_u64(out, stamp.flags);
            if stamp.deadline != 0 {
                wire::put_u64(out, stamp.deadline);
            }
            wire::put_with(out, key);
            wire::put_with(out, value);
        }
        None => {
            out.push(0);
            wire::put_with(out, key);
        }
    }
}

/// Appends a reserve record's payload.
pub(crate) fn encode_reserve(out: &mut Vec<u8>, through: u64) {
    out.push(RESERVE);
    wire::put_u64(out, through);
}

/// Appends a snapshot head.
pub(crate) fn encode_snapshot_head(out: &mut Vec<u8>, high_water: u64) {
    out.push(SNAPSHOT_HEAD);
    wire::put_u64(out, high_water);
}

/// Appends a snapshot end.
pub(crate) fn encode_snapshot_end(out: &mut Vec<u8>, entries: u64) {
    out.push(SNAPSHOT_END);
    wire::put_u64(out, entries);
}

/// Appends a sync marker.
pub(crate) fn encode_synced(out: &mut Vec<u8>, through: u64) {
    out.push(SYNCED);
    wire::put_u64(out, through);
}

/// A version's indices as the store keeps them: both at least 1, created no later than modified.
fn check_indices(modify_index: u64, create_index: u64) -> Result<(), DecodeError> {
    if create_index == 0 || create_index > modify_index {
        return Err(DecodeError::new(format!(
            "impossible indices: create_index {create_index}, modify_index {modify_index}"
        )));
    }
    Ok(())
}

/// An expiring record's deadline: never 0 (that is the plain kind's).
fn nonzero_deadline(deadline: u64) -> Result<u64, DecodeError> {
    if deadline == 0 {
        return Err(DecodeError::new("an expiring version with deadline 0"));
    }
    Ok(deadline)
}

/// Decodes one payload. The frame's checksum already passed, so an error here means a record
/// this version does not understand or a writer bug, and is reported as corruption.
pub(crate) fn decode(payload: &[u8]) -> Result<Record<'_>, DecodeError> {
    let mut r = Reader::new(payload);
    let record = match r.u8()? {
        kind @ (SET | EXPIRING_SET) => {
            let space = Space::from_u8(r.u8()?)?;
            let modify_index = r.u64()?;
            let create_index = r.u64()?;
            let flags = r.u64()?;
            let deadline = if kind == EXPIRING_SET {
                nonzero_deadline(r.u64()?)?
            } else {
                0
            };
            let key = r.bytes()?;
            let value = r.bytes()?;
            check_indices(modify_index, create_index)?;
            Record::Writes {
                space,
                index: modify_index,
                writes: vec![(
                    key,
                    Some(RawVersion {
                        value,
                        flags,
                        modify_index,
                        create_index,
                        deadline,
                    }),
                )],
            }
        }
        DELETE => {
            let space = Space::from_u8(r.u8()?)?;
            let index = r.u64()?;
            let key = r.bytes()?;
            check_indices(index, 1)?;
            Record::Writes {
                space,
                index,
                writes: vec![(key, None)],
            }
        }
        BATCH => {
            let space = Space::from_u8(r.u8()?)?;
            let index = r.u64()?;
            let count = r.u32()?;
            // Each item takes at least 5 bytes: never trust `count` for an allocation.
            let mut writes = Vec::with_capacity((count as usize).min(payload.len() / 5));
            for _ in 0..count {
                let item = match r.u8()? {
                    tag @ (1 | 2) => {
                        let create_index = r.u64()?;
                        let flags = r.u64()?;
                        let deadline = if tag == 2 {
                            nonzero_deadline(r.u64()?)?
                        } else {
                            0
                        };
                        let key = r.bytes()?;
                        let value = r.bytes()?;
                        check_indices(index, create_index)?;
                        let version = RawVersion {
                            value,
                            flags,
                            modify_index: index,
                            create_index,
                            deadline,
                        };
                        (key, Some(version))
                    }
                    0 => {
                        check_indices(index, 1)?;
                        (r.bytes()?, None)
                    }
                    other => return Err(DecodeError::new(format!("bad batch item tag {other}"))),
                };
                writes.push(item);
            }
            Record::Writes {
                space,
                index,
                writes,
            }
        }
        RESERVE => Record::Reserve { through: r.u64()? },
        SNAPSHOT_HEAD => Record::SnapshotHead {
            high_water: r.u64()?,
        },
        SNAPSHOT_END => Record::SnapshotEnd { entries: r.u64()? },
        SYNCED => Record::Synced { through: r.u64()? },
        other => return Err(DecodeError::new(format!("unknown record kind {other}"))),
    };
    r.finish()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lengths_are_what_the_encoders_write() {
        let mut out = Vec::new();
        encode_batch_head(&mut out, Space::Kv, 7, 2);
        assert_eq!(out.len(), BATCH_HEAD_LEN);
        let value = |out: &mut Vec<u8>| out.extend_from_slice(b"value");
        for deadline in [0, 1_700_000_000_000] {
            let mut item = Vec::new();
            encode_batch_item(
                &mut item,
                |o| o.extend_from_slice(b"key"),
                Some((&value, stamp(1, 0, 2, deadline))),
            );
            assert_eq!(item.len(), batch_item_len(3, Some(5), deadline != 0));
        }
        let mut item = Vec::new();
        encode_batch_item(&mut item, |o| o.extend_from_slice(b"key"), None);
        assert_eq!(item.len(), batch_item_len(3, None, false));
        assert_eq!(item.len(), batch_item_len(3, None, true));
    }

    fn stamp(flags: u64, modify_index: u64, create_index: u64, deadline: u64) -> Stamp {
        Stamp {
            flags,
            modify_index,
            create_index,
            deadline,
        }
    }

    fn put(bytes: &'static [u8]) -> impl FnOnce(&mut Vec<u8>) {
        move |out: &mut Vec<u8>| out.extend_from_slice(bytes)
    }

    #[test]
    fn every_kind_round_trips() {
        let mut out = Vec::new();
        for deadline in [0, 1_700_000_000_000] {
            out.clear();
            encode_set(
                &mut out,
                Space::Kv,
                put(b"k"),
                put(b"value"),
                stamp(3, 9, 4, deadline),
            );
            assert_eq!(out[0], if deadline == 0 { SET } else { EXPIRING_SET });
            assert_eq!(
                decode(&out).unwrap(),
                Record::Writes {
                    space: Space::Kv,
                    index: 9,
                    writes: vec![(
                        &b"k"[..],
                        Some(RawVersion {
                            value: b"value",
                            flags: 3,
                            modify_index: 9,
                            create_index: 4,
                            deadline,
                        })
                    )]
                }
            );
        }

        out.clear();
        encode_delete(&mut out, Space::Services, put(b"web"), 12);
        assert_eq!(
            decode(&out).unwrap(),
            Record::Writes {
                space: Space::Services,
                index: 12,
                writes: vec![(&b"web"[..], None)]
            }
        );

        out.clear();
        encode_batch_head(&mut out, Space::Kv, 20, 3);
        let value = |o: &mut Vec<u8>| o.extend_from_slice(b"x");
        encode_batch_item(&mut out, put(b"a"), Some((&value, stamp(0, 20, 20, 0))));
        encode_batch_item(&mut out, put(b"b"), None);
        encode_batch_item(&mut out, put(b"c"), Some((&value, stamp(5, 20, 20, 99))));
        let Record::Writes { index, writes, .. } = decode(&out).unwrap() else {
            panic!("a batch decodes as writes");
        };
        assert_eq!(index, 20);
        assert_eq!(writes.len(), 3);
        assert_eq!(writes[0].1.as_ref().unwrap().modify_index, 20);
        assert_eq!(writes[0].1.as_ref().unwrap().deadline, 0);
        assert_eq!(writes[1], (&b"b"[..], None));
        let c = writes[2].1.as_ref().unwrap();
        assert_eq!((c.flags, c.deadline, c.value), (5, 99, &b"x"[..]));

        for (encode, expected) in [
            (
                encode_reserve as fn(&mut Vec<u8>, u64),
                Record::Reserve { through: 7 },
            ),
            (encode_snapshot_head, Record::SnapshotHead { high_water: 7 }),
            (encode_snapshot_end, Record::SnapshotEnd { entries: 7 }),
            (encode_synced, Record::Synced { through: 7 }),
        ] {
            out.clear();
            encode(&mut out, 7);
            assert_eq!(decode(&out).unwrap(), expected);
        }
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut out = Vec::new();
        encode_set(
            &mut out,
            Space::Kv,
            put(b"key"),
            put(b"value"),
            stamp(0, 1, 1, 7),
        );
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        // An expiring kind with deadline 0 is not what any writer makes.
        let mut zero = out.clone();
        zero[1 + 1 + 24..1 + 1 + 32].fill(0);
        assert!(decode(&zero).is_err());
        let mut trailing = out.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        assert!(decode(&[99]).is_err());
        // A batch that claims four billion items allocates nothing up front.
        let mut huge = Vec::new();
        encode_batch_head(&mut huge, Space::Kv, 1, u32::MAX);
        assert!(decode(&huge).is_err());
    }

    #[test]
    fn impossible_indices_are_refused() {
        for (modify, create) in [(0, 0), (2, 3), (5, 0)] {
            let mut out = Vec::new();
            encode_set(
                &mut out,
                Space::Kv,
                put(b"k"),
                put(b"v"),
                stamp(0, modify, create, 0),
            );
            assert!(decode(&out).is_err(), "modify {modify}, create {create}");
        }
        let mut out = Vec::new();
        encode_delete(&mut out, Space::Kv, put(b"k"), 0);
        assert!(decode(&out).is_err(), "a delete at index 0");
        let mut out = Vec::new();
        encode_batch_head(&mut out, Space::Kv, 4, 1);
        let value = |o: &mut Vec<u8>| o.extend_from_slice(b"x");
        encode_batch_item(&mut out, put(b"a"), Some((&value, stamp(0, 0, 5, 0))));
        assert!(decode(&out).is_err(), "created after the batch");
    }
}
