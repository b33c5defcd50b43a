//! The store's [`Journal`] for a persistent store: encodes each mutation and appends it to
//! the log. Runs while the key is settling, so it only encodes and copies; it never does I/O.

use std::cell::RefCell;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use super::codec::Codec;
use super::frame;
use super::log::Log;
use super::record::{self, Space};
use crate::entry::EntryRef;
use crate::journal::{Journal, Mutation};

/// Appends the mutations of one space (KV or services) to the log.
pub(crate) struct LogJournal<K, V> {
    log: Arc<Log>,
    space: Space,
    types: PhantomData<fn(&K, &V)>,
}

impl<K, V> LogJournal<K, V> {
    pub(crate) fn new(log: Arc<Log>, space: Space) -> Self {
        LogJournal {
            log,
            space,
            types: PhantomData,
        }
    }
}

thread_local! {
    /// Per-thread scratch: the payload, then the framed record.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Buffers above this are dropped after use rather than kept per thread.
const KEEP_SCRATCH: usize = 1 << 20;

/// Encodes a set record of `key` holding `entry` (a write, or a snapshot's entry).
pub(crate) fn encode_entry<K: Codec, V: Codec>(
    out: &mut Vec<u8>,
    space: Space,
    key: &K,
    entry: &EntryRef<'_, V>,
) {
    record::encode_set(
        out,
        space,
        |o| key.encode(o),
        |o| entry.value.encode(o),
        stamp(entry),
    )
}

/// The fields of `entry` besides its value, as a record carries them.
fn stamp<V>(entry: &EntryRef<'_, V>) -> record::Stamp {
    record::Stamp {
        flags: entry.flags,
        modify_index: entry.modify_index,
        create_index: entry.create_index,
        deadline: entry.deadline(),
    }
}

/// Encodes one mutation's payload.
pub(crate) fn encode_mutation<K: Codec, V: Codec>(
    out: &mut Vec<u8>,
    space: Space,
    mutation: &Mutation<'_, K, V>,
) {
    match mutation {
        Mutation::Set { key, entry } => encode_entry(out, space, *key, entry),
        Mutation::Delete { key, index } => {
            record::encode_delete(out, space, |o| key.encode(o), *index)
        }
        Mutation::Batch { index, writes } => {
            record::encode_batch_head(out, space, *index, writes.len() as u32);
            for (key, entry) in writes.iter() {
                match entry {
                    Some(e) => {
                        let value = |o: &mut Vec<u8>| e.value.encode(o);
                        record::encode_batch_item(out, |o| key.encode(o), Some((&value, stamp(e))));
                    }
                    None => record::encode_batch_item(out, |o| key.encode(o), None),
                }
            }
        }
    }
}

impl<K: Codec, V: Codec> Journal<K, V> for LogJournal<K, V> {
    fn record(&self, mutation: Mutation<'_, K, V>) -> u64 {
        let append = |payload: &mut Vec<u8>, framed: &mut Vec<u8>| {
            payload.clear();
            framed.clear();
            encode_mutation(payload, self.space, &mutation);
            if payload.len() > frame::MAX_RECORD_LEN {
                // The persistent store bounds entries before writing, so this is a bug; fail
                // the log rather than write a record recovery would reject.
                let e = io::Error::other(format!(
                    "a {}-byte record exceeds the log's frame limit",
                    payload.len()
                ));
                return self.log.fail(e);
            }
            frame::encode_record(payload, framed);
            self.log.append(framed)
        };
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut bufs) => {
                let (payload, framed) = &mut *bufs;
                let ticket = append(payload, framed);
                if payload.capacity() > KEEP_SCRATCH {
                    *payload = Vec::new();
                }
                if framed.capacity() > KEEP_SCRATCH {
                    *framed = Vec::new();
                }
                ticket
            }
            // Re-entered (a codec that writes to a store): use fresh buffers.
            Err(_) => append(&mut Vec::new(), &mut Vec::new()),
        })
    }
}
