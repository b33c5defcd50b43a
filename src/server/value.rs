//! [`KvValue`]: what the server's KV store holds for a key — the value's bytes, and the Consul
//! lock on the key (its `LockIndex` and the `Session` holding it).
//!
//! The native API speaks UTF-8 text (SPEC §1); the Consul face (`/v1/kv`) speaks bytes. One
//! store serves both faces, so a value is bytes that remember whether they are UTF-8 (checked
//! once, when the value is made, never on a read). A Consul lock belongs to the key's current
//! version: acquiring, releasing or invalidating it is a write at a fresh index, like any other.

use bytes::Bytes;

use crate::persist::{Codec, DecodeError};

/// A Consul session's identifier (a random UUID).
pub type SessionId = uuid::Uuid;

/// A value of the server's KV store: bytes, plus the Consul lock state of the key.
///
/// # Invariants
/// `text` is true exactly when `bytes` are valid UTF-8. `lock_index` counts the acquisitions of
/// the key by a session (Consul writes carry it over; a native write, which replaces the value
/// whole, starts it again at 0); `session` is the holder, if any.
///
/// # Example
/// ```
/// use caskv::server::KvValue;
/// let v = KvValue::text("hello".to_string());
/// assert_eq!(v.as_str(), Some("hello"));
/// let b = KvValue::bytes(vec![0xff, 0x00].into());
/// assert_eq!(b.as_str(), None);
/// assert_eq!(b.as_bytes(), &[0xff, 0x00]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvValue {
    bytes: Bytes,
    text: bool,
    lock_index: u64,
    session: Option<SessionId>,
}

/// The first byte of the tagged encoding: never the first byte of UTF-8 text (0xC1 can start no
/// UTF-8 sequence), so a value logged as plain text (every value before the Consul face) and a
/// tagged one tell themselves apart.
const TAGGED: u8 = 0xC1;
/// In the tagged encoding's flag byte: a session id follows the lock index.
const HAS_SESSION: u8 = 1;

impl KvValue {
    /// A text value (native API writes), no lock.
    pub fn text(text: String) -> Self {
        KvValue {
            bytes: Bytes::from(text),
            text: true,
            lock_index: 0,
            session: None,
        }
    }

    /// A value of any bytes (Consul writes), no lock.
    pub fn bytes(bytes: Bytes) -> Self {
        let text = std::str::from_utf8(&bytes).is_ok();
        KvValue {
            bytes,
            text,
            lock_index: 0,
            session: None,
        }
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The value's bytes, shared (no copy).
    pub fn shared_bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The value as text, or `None` when its bytes are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        if self.text {
            // SAFETY: `text` is set only by the constructors, after they checked (or were
            // given) UTF-8, and the bytes never change (the type's invariant).
            Some(unsafe { std::str::from_utf8_unchecked(&self.bytes) })
        } else {
            None
        }
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How many times a session acquired the key (Consul's `LockIndex`).
    pub fn lock_index(&self) -> u64 {
        self.lock_index
    }

    /// The session holding the key's lock (Consul's `Session`), if any.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// This value with the lock state `lock_index` / `session`.
    pub fn with_lock(mut self, lock_index: u64, session: Option<SessionId>) -> Self {
        self.lock_index = lock_index;
        self.session = session;
        self
    }

    fn plain(&self) -> bool {
        self.text && self.lock_index == 0 && self.session.is_none()
    }
}

impl From<String> for KvValue {
    fn from(text: String) -> Self {
        KvValue::text(text)
    }
}

impl From<&str> for KvValue {
    fn from(text: &str) -> Self {
        KvValue::text(text.to_string())
    }
}

/// A value equals text when its bytes are that text (its lock state aside).
impl PartialEq<str> for KvValue {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for KvValue {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// Text with no lock is logged as its bytes alone (as a `String` value is: data directories
/// written before the Consul face read back unchanged); anything else as
/// `0xC1, flags, lock_index (u64 LE), [session (16 bytes)], bytes`.
impl Codec for KvValue {
    fn encode(&self, out: &mut Vec<u8>) {
        if !self.plain() {
            out.push(TAGGED);
            out.push(if self.session.is_some() {
                HAS_SESSION
            } else {
                0
            });
            out.extend_from_slice(&self.lock_index.to_le_bytes());
            if let Some(s) = self.session {
                out.extend_from_slice(s.as_bytes());
            }
        }
        out.extend_from_slice(&self.bytes);
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.first() != Some(&TAGGED) {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| DecodeError::new(format!("an untagged value is not UTF-8: {e}")))?;
            return Ok(KvValue::text(text.to_string()));
        }
        let short = || DecodeError::new("a tagged value is cut short");
        let flags = *bytes.get(1).ok_or_else(short)?;
        if flags & !HAS_SESSION != 0 {
            return Err(DecodeError::new(format!(
                "a tagged value has unknown flags {flags:#x}"
            )));
        }
        let index = bytes.get(2..10).ok_or_else(short)?;
        let lock_index = u64::from_le_bytes(index.try_into().map_err(|_| short())?);
        let (session, rest) = if flags & HAS_SESSION != 0 {
            let id = bytes.get(10..26).ok_or_else(short)?;
            let id = SessionId::from_slice(id).map_err(|_| short())?;
            (Some(id), &bytes[26..])
        } else {
            (None, &bytes[10..])
        };
        Ok(KvValue::bytes(Bytes::copy_from_slice(rest)).with_lock(lock_index, session))
    }

    fn encoded_len(&self) -> usize {
        let header = if self.plain() {
            0
        } else if self.session.is_some() {
            26
        } else {
            10
        };
        header + self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &KvValue) -> KvValue {
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out.len(), v.encoded_len());
        KvValue::decode(&out).unwrap()
    }

    #[test]
    fn plain_text_is_logged_as_a_string_is() {
        let v = KvValue::text("héllo".into());
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, "héllo".as_bytes());
        assert_eq!(round_trip(&v), v);
        // What a data directory written before the Consul face holds reads back as text.
        assert_eq!(
            KvValue::decode(b"old value").unwrap(),
            KvValue::text("old value".into())
        );
    }

    #[test]
    fn binary_and_locked_values_round_trip() {
        let binary = KvValue::bytes(Bytes::from_static(&[TAGGED, 0xff, 0]));
        assert_eq!(binary.as_str(), None);
        assert_eq!(round_trip(&binary), binary);
        let id = SessionId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let locked = KvValue::text("v".into()).with_lock(3, Some(id));
        assert_eq!(round_trip(&locked), locked);
        let released = KvValue::text(String::new()).with_lock(3, None);
        assert_eq!(round_trip(&released), released);
    }

    #[test]
    fn bad_encodings_are_errors_not_panics() {
        for bad in [
            &[TAGGED][..],
            &[TAGGED, 0, 1],
            &[TAGGED, 4, 0, 0, 0, 0, 0, 0, 0, 0],
            &[TAGGED, HAS_SESSION, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2],
            &[0xff, 0xfe],
        ] {
            assert!(KvValue::decode(bad).is_err(), "{bad:?}");
        }
    }
}
