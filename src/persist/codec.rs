//! How keys and values become bytes in the log and in snapshots.

use std::fmt;

/// A key or value type a persistent store can write to its log and read back.
///
/// `decode(encode(x)) == x` must hold. The bytes are framed and checksummed by the log, so
/// `decode` sees exactly what `encode` wrote; it fails only for data written by a different
/// type (a data directory opened with the wrong types).
///
/// # Example
/// ```
/// use caskv::persist::{Codec, DecodeError};
///
/// #[derive(Debug, PartialEq)]
/// struct Celsius(i32);
/// impl Codec for Celsius {
///     fn encode(&self, out: &mut Vec<u8>) {
///         out.extend_from_slice(&self.0.to_le_bytes());
///     }
///     fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
///         let raw = bytes.try_into().map_err(|_| DecodeError::new("Celsius needs 4 bytes"))?;
///         Ok(Celsius(i32::from_le_bytes(raw)))
///     }
/// }
/// let mut buf = Vec::new();
/// Celsius(-4).encode(&mut buf);
/// assert_eq!(Celsius::decode(&buf).unwrap(), Celsius(-4));
/// ```
pub trait Codec: Sized {
    /// Appends this value's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads a value back from the bytes `encode` wrote.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;

    /// The number of bytes `encode` writes (checked against the log's bounds before a write).
    /// The default encodes into a scratch buffer; override it when the length is known.
    fn encoded_len(&self) -> usize {
        let mut scratch = Vec::new();
        self.encode(&mut scratch);
        scratch.len()
    }
}

/// Bytes that do not decode as the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(String);

impl DecodeError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        DecodeError(message.into())
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Codec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes.to_vec())
    }
    fn encoded_len(&self) -> usize {
        self.len()
    }
}

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| DecodeError::new(e.to_string()))
    }
    fn encoded_len(&self) -> usize {
        self.len()
    }
}

/// A shared value is logged as the value it shares (values are stored inline, so `Arc<T>` is
/// how a store shares an expensive value with its readers).
impl<T: Codec> Codec for std::sync::Arc<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        T::decode(bytes).map(std::sync::Arc::new)
    }

    fn encoded_len(&self) -> usize {
        (**self).encoded_len()
    }
}

impl Codec for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw = bytes
            .try_into()
            .map_err(|_| DecodeError::new(format!("a u64 is 8 bytes, not {}", bytes.len())))?;
        Ok(u64::from_le_bytes(raw))
    }
}

/// Little-endian primitives and length-prefixed byte strings, shared by the record encoder and
/// the codecs of compound types (a service registration).
pub(crate) mod wire {
    use super::DecodeError;

    pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
        // Lengths are bounded by the record bound (64 MiB), far below u32::MAX.
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// Writes a length prefix, lets `encode` append, then fills the prefix in.
    pub(crate) fn put_with(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode(out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// A cursor over a payload.
    pub(crate) struct Reader<'a> {
        bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub(crate) fn new(bytes: &'a [u8]) -> Self {
            Reader { bytes }
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
            if self.bytes.len() < n {
                return Err(DecodeError::new("record ends early"));
            }
            let (head, rest) = self.bytes.split_at(n);
            self.bytes = rest;
            Ok(head)
        }

        pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
            Ok(self.take(1)?[0])
        }

        pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
            let mut raw = [0; 2];
            raw.copy_from_slice(self.take(2)?);
            Ok(u16::from_le_bytes(raw))
        }

        pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
            let mut raw = [0; 4];
            raw.copy_from_slice(self.take(4)?);
            Ok(u32::from_le_bytes(raw))
        }

        pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
            let mut raw = [0; 8];
            raw.copy_from_slice(self.take(8)?);
            Ok(u64::from_le_bytes(raw))
        }

        pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
            let len = self.u32()? as usize;
            self.take(len)
        }

        pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
            String::from_utf8(self.bytes()?.to_vec()).map_err(|e| DecodeError::new(e.to_string()))
        }

        pub(crate) fn finish(&self) -> Result<(), DecodeError> {
            match self.bytes.is_empty() {
                true => Ok(()),
                false => Err(DecodeError::new("trailing bytes after a record")),
            }
        }
    }
}
